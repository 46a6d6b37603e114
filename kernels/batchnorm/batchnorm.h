// batchnorm: inference-mode batch normalization with running statistics, as F.batch_norm(x, running_mean,
// running_var, weight, bias, training=False, eps=eps) (the FPN's BatchNorm2d(2048) in eval mode, eps 1e-5).
//
// Contract: x and out are f32 (or bf16 on CUDA) [N, C, *spatial] of the same shape (NCHW for images; any
// number of trailing dims, possibly none); running_mean, running_var, weight and bias are [C] of x's dtype (the
// model's parameters, stored alike); all on one device.
// out[n, c, ...] = (x[n, c, ...] - running_mean[c]) / sqrt(running_var[c] + eps) * weight[c] + bias[c].
// The statistics are never updated (training-mode batch statistics are batchnorm_train below).
//
// batchnorm_backward (of the inference op above; CPU and CUDA): gradients given grad_out (x's shape); the running
// statistics are constants. x, the running statistics, weight, grad_out and every gradient share one dtype: f32
// (or bf16 on CUDA). With s = 1 / sqrt(running_var + eps):
//   grad_x x's shape, required: grad_out * weight * s
//   grad_weight [C], optional: sum over n and spatial of grad_out * (x - running_mean) * s
//   grad_bias   [C], optional: sum over n and spatial of grad_out
//
// batchnorm_train: training-mode forward, as F.batch_norm(x, running_mean, running_var, weight, bias,
// training=True, momentum, eps). x, out, weight and bias: f32 (or bf16 on CUDA), shaped as above. Per channel c
// over its M = N * spatial values (M >= 2): batch mean and biased variance normalize x; save_mean[c] and
// save_rstd[c] = 1 / sqrt(var + eps) (f32 [C] whatever x's dtype, outputs) keep them for the backward.
// running_mean and running_var (f32 [C] whatever x's dtype, both or neither; undefined = not tracked) are
// updated in place as PyTorch does: r = (1 - momentum) * r + momentum * batch value, with the UNBIASED variance
// (var * M / (M - 1)) for running_var. momentum in [0, 1]. Statistics are accumulated in double on the CPU, in
// f32 on CUDA (two passes, shifted by the channel's first value).
//
// batchnorm_train_backward (CPU and CUDA): gradients of batchnorm_train through the batch statistics, given
// grad_out. x, weight, grad_out and every gradient share one dtype: f32 (or bf16 on CUDA). save_mean /
// save_rstd: the forward's (both, f32), or both undefined to recompute them from x (in double on the CPU; on
// CUDA in f32 inside the kernel, two passes shifted as in the forward). With xhat = (x - mean) * rstd, per channel:
//   grad_x x's shape, required: weight * rstd * (grad_out - mean(grad_out) - xhat * mean(grad_out * xhat))
//   grad_weight [C], optional: sum of grad_out * xhat;   grad_bias [C], optional: sum of grad_out
// (The running statistics do not enter the output, so they get no gradient.)
//
// For both backwards an undefined grad_weight / grad_bias is not computed, and every gradient output is
// OVERWRITTEN, never accumulated into. Channel sums are deterministic: in double, one channel per task on the
// CPU; in f32, one block per channel on CUDA (no atomics). On CUDA grad_x may be grad_out's memory.
//
// SyncBN (graph/model/distributed.h): batchnorm_train whose batch statistics are those of every rank's x
// together (all ranks' x of one shape, M = N * spatial values per channel each, W ranks), as torch's
// SyncBatchNorm. Four steps around two collectives (CPU and CUDA; statistics in double on the CPU, f32 on CUDA):
//   batchnorm_moments(x, moments)    moments f32 [2, C]: this rank's channel means (row 0) and M2 (row 1, sum of
//                                    squared deviations from that mean)
//   -> all_gather over ranks: gathered f32 [W, 2, C]
//   batchnorm_train_synced(...)      combines them (equal counts: mean = the average of the means, M2 = sum of the
//                                    M2 + M * sum of (mean_r - mean)^2, var = M2 / (W M)) and then does what
//                                    batchnorm_train does with those statistics (running_var gets the unbiased
//                                    var * WM / (WM - 1)); x, weight, bias, out, save_* as batchnorm_train
//   batchnorm_grad_sums(...)         sums f32 [2, C]: this rank's channel sums of grad_out (row 0) and of
//                                    grad_out * xhat (row 1), xhat from the saved statistics
//   -> all_reduce(sum) over ranks
//   batchnorm_train_backward_synced  grad_x = weight * rstd * (grad_out - s0 / count - xhat * s1 / count) with the
//                                    group's sums s and count = W * M; grad_x may not alias grad_out.
// The parameter gradients of a rank are its own sums (rows 1 and 0 of batchnorm_grad_sums' output), which the
// data-parallel gradient average then combines. With W = 1 the steps give batchnorm_train and its backward.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void batchnorm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
               const Tensor& bias, Tensor& out, float eps);
void batchnorm_backward(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                        const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias, float eps);
void batchnorm_train(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                     Tensor& running_var, Tensor& out, Tensor& save_mean, Tensor& save_rstd, float momentum,
                     float eps);
void batchnorm_train_backward(const Tensor& x, const Tensor& weight, const Tensor& save_mean, const Tensor& save_rstd,
                              const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias,
                              float eps);
void batchnorm_moments(const Tensor& x, Tensor& moments);
void batchnorm_train_synced(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& gathered,
                            Tensor& running_mean, Tensor& running_var, Tensor& out, Tensor& save_mean,
                            Tensor& save_rstd, float momentum, float eps);
void batchnorm_grad_sums(const Tensor& x, const Tensor& save_mean, const Tensor& save_rstd, const Tensor& grad_out,
                         Tensor& sums);
void batchnorm_train_backward_synced(const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                                     const Tensor& save_rstd, const Tensor& grad_out, const Tensor& sums,
                                     int64_t count, Tensor& grad_x);

namespace cpu {
void batchnorm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
               const Tensor& bias, Tensor& out, float eps);
void batchnorm_backward(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                        const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias, float eps);
void batchnorm_train(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                     Tensor& running_var, Tensor& out, Tensor& save_mean, Tensor& save_rstd, float momentum,
                     float eps);
void batchnorm_train_backward(const Tensor& x, const Tensor& weight, const Tensor& save_mean, const Tensor& save_rstd,
                              const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias,
                              float eps);
void batchnorm_moments(const Tensor& x, Tensor& moments);
void batchnorm_train_synced(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& gathered,
                            Tensor& running_mean, Tensor& running_var, Tensor& out, Tensor& save_mean,
                            Tensor& save_rstd, float momentum, float eps);
void batchnorm_grad_sums(const Tensor& x, const Tensor& save_mean, const Tensor& save_rstd, const Tensor& grad_out,
                         Tensor& sums);
void batchnorm_train_backward_synced(const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                                     const Tensor& save_rstd, const Tensor& grad_out, const Tensor& sums,
                                     int64_t count, Tensor& grad_x);
}
// The CUDA launchers (batchnorm.cu); call them through the dispatchers above, which check the shapes.
namespace cuda {
void batchnorm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
               const Tensor& bias, Tensor& out, float eps);
void batchnorm_train(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                     Tensor& running_var, Tensor& out, Tensor& save_mean, Tensor& save_rstd, float momentum,
                     float eps);
void batchnorm_backward(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                        const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias, float eps);
void batchnorm_train_backward(const Tensor& x, const Tensor& weight, const Tensor& save_mean, const Tensor& save_rstd,
                              const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias,
                              float eps);
void batchnorm_moments(const Tensor& x, Tensor& moments);
void batchnorm_train_synced(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& gathered,
                            Tensor& running_mean, Tensor& running_var, Tensor& out, Tensor& save_mean,
                            Tensor& save_rstd, float momentum, float eps);
void batchnorm_grad_sums(const Tensor& x, const Tensor& save_mean, const Tensor& save_rstd, const Tensor& grad_out,
                         Tensor& sums);
void batchnorm_train_backward_synced(const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                                     const Tensor& save_rstd, const Tensor& grad_out, const Tensor& sums,
                                     int64_t count, Tensor& grad_x);
}

}  // namespace mfuser::kernels
