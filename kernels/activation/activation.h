// activation: element-wise nonlinearities, out = f(x), f32 (or bf16 on CUDA: x and out share one dtype; f32
// arithmetic, one rounding on the store), any shape (x and out of one shape; out may be x). The backward too
// (x, grad_out and grad_in of one dtype and shape).
//
//   gelu        x * Phi(x) with the exact erf form        F.gelu(x) (approximate='none'); DINOv2 MLP, FPN
//   quick_gelu  x * sigmoid(1.702 x)                      CLIP's QuickGELU (its MLPs, the text encoder)
//   silu        x * sigmoid(x)                            F.silu; Mamba gate and conv
//   relu        max(x, 0), NaN stays NaN                  F.relu
//   sigmoid     1 / (1 + exp(-x))                         torch.sigmoid
//   softplus    log(1 + exp(x)), and x itself for x > 20  F.softplus(x, beta=1, threshold=20); Mamba's dt
//   exp         exp(x)                                    torch.exp; Mamba's A = -exp(A_log) when training
//
// The reference evaluates each in f32 in a form without cancellation (gelu through erfc, sigmoid through
// exp of a non-positive argument), so it tracks PyTorch's f64 results to about an ulp; infinities and NaN
// give what PyTorch gives (e.g. gelu(-inf) and silu(-inf) are NaN, softplus(-inf) is 0).
//
// activation_backward(x, grad_out, grad_in, kind): grad_in = grad_out * f'(x), from the forward's INPUT x
// (saved; relu and sigmoid could use the output instead, but one contract for all keeps callers simple).
// grad_in is OVERWRITTEN; it may be grad_out itself (in place), or x. Derivatives as PyTorch's autograd:
//   gelu        Phi(x) + x phi(x)                 quick_gelu  s + 1.702 x s (1 - s), s = sigmoid(1.702 x)
//   silu        s + x s (1 - s), s = sigmoid(x)   relu        0 where x <= 0, else 1 (NaN x passes grad_out)
//   sigmoid     s (1 - s)                         softplus    sigmoid(x), and 1 for x > 20 (the threshold)
//   exp         exp(x)
// evaluated in f64 and rounded once on the CPU, so the result tracks PyTorch's f64 autograd to about an ulp;
// in f32 on CUDA (a few ulp).
#pragma once

#include <string_view>

#include "runtime/tensor.h"

namespace mfuser::kernels {

enum class Activation { gelu, quick_gelu, silu, relu, sigmoid, softplus, exp };

std::string_view activation_name(Activation kind);

void activation(const Tensor& x, Tensor& out, Activation kind);
void activation_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_in, Activation kind);

namespace cpu {
void activation(const Tensor& x, Tensor& out, Activation kind);
void activation_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_in, Activation kind);
}  // namespace cpu
namespace cuda {
void activation(const Tensor& x, Tensor& out, Activation kind);
void activation_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_in, Activation kind);
}  // namespace cuda

}  // namespace mfuser::kernels
