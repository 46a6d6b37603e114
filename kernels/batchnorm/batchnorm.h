// batchnorm: inference-mode batch normalization with running statistics, as F.batch_norm(x, running_mean,
// running_var, weight, bias, training=False, eps=eps) (the FPN's BatchNorm2d(2048) in eval mode, eps 1e-5).
//
// Contract: x and out are f32 [N, C, *spatial] of the same shape (NCHW for images; any number of trailing
// dims, possibly none); running_mean, running_var, weight and bias are f32 [C]; all on one device.
// out[n, c, ...] = (x[n, c, ...] - running_mean[c]) / sqrt(running_var[c] + eps) * weight[c] + bias[c].
// The statistics are never updated (training-mode batch statistics are a different op).
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void batchnorm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
               const Tensor& bias, Tensor& out, float eps);

namespace cpu {
void batchnorm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
               const Tensor& bias, Tensor& out, float eps);
}

}  // namespace mfuser::kernels
