// The backward rule of every Builder op (see backward.h): each factory captures the forward op's values and
// attributes and returns the function that appends the op's backward nodes. The Builder records them; model
// code never calls these.
//
// Conventions for every rule:
//   - read the output gradient(s) with c.grad(out); kNoValue means zero (e.g. an unused split part);
//   - compute only the input gradients c.wants(...) (pass undefined tensors to the backward kernels for the
//     others: a frozen weight costs nothing);
//   - append nodes through c.builder().graph().add(...) / Builder ops, named c.name(out) (+ a suffix when a
//     rule adds several), op names "<op>_backward";
//   - hand each input its gradient with c.accumulate(input, grad) (same shape as the input).
// The backward kernels take f32 tensors on the CPU (CUDA backward kernels are the CUDA issue's second half).
#pragma once

#include <vector>

#include "graph/model/backward.h"
#include "kernels/activation/activation.h"
#include "kernels/dropout/dropout.h"
#include "kernels/gemm/gemm.h"
#include "runtime/communicator.h"

namespace mfuser::model::grad {

// ---- views and the generic node (graph/model/grad_rules_views.cpp) ----
BackwardRule reshape(ValueId x, ValueId out);
BackwardRule slice_rows(ValueId x, ValueId out, int64_t begin);
// The gradient passes unchanged; GradContext::accumulate converts it to x's dtype.
BackwardRule cast(ValueId x, ValueId out);
// Builder::node() ops with no rule: building the backward through one fails with this message.
BackwardRule unsupported(ValueId out, const std::string& op);

// ---- dense and element-wise (graph/model/grad_rules_dense.cpp) ----
BackwardRule linear(ValueId x, ValueId weight, ValueId bias, ValueId y);
BackwardRule matmul(ValueId x, ValueId y, ValueId out, const kernels::GemmParams& params);
BackwardRule add(ValueId a, ValueId b, ValueId out);
BackwardRule mul(ValueId a, ValueId b, ValueId out);
BackwardRule scale(ValueId x, ValueId out, float factor);
BackwardRule activation(ValueId x, ValueId out, kernels::Activation kind);
// grad_x = the same mask (redrawn from the same seed and salt) applied to grad_out.
BackwardRule dropout(ValueId x, ValueId seed, ValueId out, const kernels::DropoutMask& mask);
BackwardRule softmax(ValueId x, ValueId mask, ValueId out);
BackwardRule attention(ValueId q, ValueId k, ValueId v, ValueId out, bool causal, ValueId bool_mask,
                       ValueId float_mask);
BackwardRule embedding(ValueId ids, ValueId table, ValueId out);

// ---- normalization (graph/model/grad_rules_norm.cpp) ----
BackwardRule layernorm(ValueId x, ValueId weight, ValueId bias, ValueId out, float eps);
BackwardRule groupnorm(ValueId x, ValueId weight, ValueId bias, ValueId out, int num_groups, float eps);
// Training-mode BatchNorm: save_mean / save_rstd are the forward's batch statistics (f32 [C]).
BackwardRule batchnorm_train(ValueId x, ValueId weight, ValueId bias, ValueId out, ValueId save_mean,
                             ValueId save_rstd);
// SyncBN (statistics over every rank of `comm`): this rank's gradient sums, all-reduced over the ranks, give
// grad_x; the parameter gradients are this rank's sums (views), averaged later with every other gradient.
BackwardRule sync_batchnorm_train(Communicator& comm, ValueId x, ValueId weight, ValueId bias, ValueId out,
                                  ValueId save_mean, ValueId save_rstd);
BackwardRule rmsnorm_gated(ValueId x, ValueId z, ValueId weight, ValueId out, float eps);
BackwardRule l2norm(ValueId x, ValueId out, int dim);

// ---- convolution, resampling, layout (graph/model/grad_rules_spatial.cpp) ----
BackwardRule conv2d(ValueId x, ValueId weight, ValueId bias, ValueId out, int stride, int padding);
BackwardRule conv_transpose2d(ValueId x, ValueId weight, ValueId bias, ValueId out);
BackwardRule maxpool2d(ValueId x, ValueId out);
BackwardRule resize_bilinear(ValueId x, ValueId out);
BackwardRule permute(ValueId x, ValueId out, const std::vector<int>& perm);
BackwardRule concat(const std::vector<ValueId>& xs, ValueId out, int dim);
BackwardRule split(ValueId x, const std::vector<ValueId>& outs, int dim);

// ---- sequence models (graph/model/grad_rules_sequence.cpp) ----
BackwardRule dwconv1d(ValueId x, ValueId weight, ValueId bias, ValueId out);
BackwardRule selective_scan(ValueId u, ValueId delta, ValueId A, ValueId B, ValueId C, ValueId D,
                            ValueId delta_bias, ValueId out);
BackwardRule msdeform_attn(ValueId value, ValueId spatial_shapes, ValueId level_start_index, ValueId locations,
                           ValueId weights, ValueId out);

}  // namespace mfuser::model::grad
