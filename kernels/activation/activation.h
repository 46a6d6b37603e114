// activation: element-wise nonlinearities, out = f(x), f32, any shape (x and out of one shape; out may be x).
//
//   gelu        x * Phi(x) with the exact erf form        F.gelu(x) (approximate='none'); DINOv2 MLP, FPN
//   quick_gelu  x * sigmoid(1.702 x)                      CLIP's QuickGELU (its MLPs, the text encoder)
//   silu        x * sigmoid(x)                            F.silu; Mamba gate and conv
//   relu        max(x, 0), NaN stays NaN                  F.relu
//   sigmoid     1 / (1 + exp(-x))                         torch.sigmoid
//   softplus    log(1 + exp(x)), and x itself for x > 20  F.softplus(x, beta=1, threshold=20); Mamba's dt
//
// The reference evaluates each in f32 in a form without cancellation (gelu through erfc, sigmoid through
// exp of a non-positive argument), so it tracks PyTorch's f64 results to about an ulp; infinities and NaN
// give what PyTorch gives (e.g. gelu(-inf) and silu(-inf) are NaN, softplus(-inf) is 0).
#pragma once

#include <string_view>

#include "runtime/tensor.h"

namespace mfuser::kernels {

enum class Activation { gelu, quick_gelu, silu, relu, sigmoid, softplus };

std::string_view activation_name(Activation kind);

void activation(const Tensor& x, Tensor& out, Activation kind);

namespace cpu {
void activation(const Tensor& x, Tensor& out, Activation kind);
}

}  // namespace mfuser::kernels
