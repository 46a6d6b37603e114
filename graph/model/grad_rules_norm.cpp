// Backward rules of the normalization Builder ops. Each appends one "<op>_backward" node that reads the
// forward's input x (and the affine weight), never its output: the statistics are recomputed from x by the CPU
// backward kernels (cheap, and exact in double) except for training-mode BatchNorm, whose rule has the
// forward's saved batch statistics (f32 [C]) at hand.
#include "graph/model/builder.h"
#include "graph/model/grad_rules_util.h"
#include "kernels/batchnorm/batchnorm.h"
#include "kernels/groupnorm/groupnorm.h"
#include "kernels/l2norm/l2norm.h"
#include "kernels/layernorm/layernorm.h"
#include "kernels/rmsnorm_gated/rmsnorm_gated.h"

namespace mfuser::model::grad {

using detail::backward_node;
using detail::Grads;
using detail::Ins;
using detail::Outs;

// layernorm_backward with the statistics recomputed from x: reads x, weight and the output gradient. grad_x
// is always computed (the kernel requires it); grad_weight / grad_bias only when wanted.
BackwardRule layernorm(ValueId x, ValueId weight, ValueId bias, ValueId out, float eps) {
  return [=](GradContext& c) {
    backward_node(c, "layernorm_backward", out, {x, weight, c.grad(out)},
                  {{x, true}, {weight, false}, {bias, false}}, [eps](Ins in, Grads& g) {
                    kernels::layernorm_backward(in[0], in[1], Tensor(), Tensor(), in[2], g[0], g[1], g[2], eps);
                  });
  };
}

// groupnorm_backward (statistics always recomputed from x): reads x, weight and the output gradient.
BackwardRule groupnorm(ValueId x, ValueId weight, ValueId bias, ValueId out, int num_groups, float eps) {
  return [=](GradContext& c) {
    backward_node(c, "groupnorm_backward", out, {x, weight, c.grad(out)},
                  {{x, true}, {weight, false}, {bias, false}}, [num_groups, eps](Ins in, Grads& g) {
                    kernels::groupnorm_backward(in[0], in[1], in[2], g[0], g[1], g[2], num_groups, eps);
                  });
  };
}

// batchnorm_train_backward through the batch statistics, from the forward's saved save_mean / save_rstd (f32
// [C]): reads x, weight, both statistics and the output gradient. The rule has no eps (the saved rstd already
// holds it), so the kernel gets 0, which it only range-checks when statistics are passed.
BackwardRule batchnorm_train(ValueId x, ValueId weight, ValueId bias, ValueId out, ValueId save_mean,
                             ValueId save_rstd) {
  return [=](GradContext& c) {
    backward_node(c, "batchnorm_train_backward", out, {x, weight, save_mean, save_rstd, c.grad(out)},
                  {{x, true}, {weight, false}, {bias, false}}, [](Ins in, Grads& g) {
                    kernels::batchnorm_train_backward(in[0], in[1], in[2], in[3], in[4], g[0], g[1], g[2],
                                                      /*eps=*/0.f);
                  });
  };
}

// SyncBN: node "batchnorm_grad_sums" ([2, C]: sum of grad_out, sum of grad_out * xhat on this rank), their
// all_reduce, then "batchnorm_train_backward_synced" for grad_x over the group's W * M values per channel.
BackwardRule sync_batchnorm_train(Communicator& comm, ValueId x, ValueId weight, ValueId bias, ValueId out,
                                  ValueId save_mean, ValueId save_rstd) {
  return [=, &comm](GradContext& c) {
    Builder& b = c.builder();
    const Shape xs = b.shape(x);
    const int64_t channels = xs[1], count = xs.numel() / channels * comm.world_size();
    const ValueId dy = c.grad(out);
    const ValueId sums = b.node("batchnorm_grad_sums", c.name(out, ".sums"), {x, save_mean, save_rstd, dy},
                                {2, channels}, [](Ins in, Outs o) {
                                  kernels::batchnorm_grad_sums(in[0], in[1], in[2], in[3], o[0]);
                                }, DType::f32);
    if (c.wants(x)) {
      const ValueId group_sums = b.all_reduce(comm, sums, ReduceOp::sum, CollectiveOrder::in_stream,
                                              c.name(out, ".sums.all_reduce"));
      c.accumulate(x, b.node("batchnorm_train_backward_synced", c.name(out), {x, weight, save_mean, save_rstd, dy,
                                                                               group_sums},
                             xs, [count](Ins in, Outs o) {
                               kernels::batchnorm_train_backward_synced(in[0], in[1], in[2], in[3], in[4], in[5],
                                                                        count, o[0]);
                             }, b.dtype(x)));
    }
    c.accumulate(bias, b.reshape(b.slice_rows(sums, 0, 1), {channels}, c.name(bias)));
    c.accumulate(weight, b.reshape(b.slice_rows(sums, 1, 2), {channels}, c.name(weight)));
  };
}

// rmsnorm_gated_backward (rstd recomputed from x): reads x, z, weight and the output gradient. grad_x and grad_z
// are always computed (the kernel requires both); grad_weight only when wanted.
BackwardRule rmsnorm_gated(ValueId x, ValueId z, ValueId weight, ValueId out, float eps) {
  return [=](GradContext& c) {
    backward_node(c, "rmsnorm_gated_backward", out, {x, z, weight, c.grad(out)},
                  {{x, true}, {z, true}, {weight, false}}, [eps](Ins in, Grads& g) {
                    kernels::rmsnorm_gated_backward(in[0], in[1], in[2], in[3], g[0], g[1], g[2], eps);
                  });
  };
}

// l2norm_backward from the forward's input x (the Builder's forward uses the default eps, so does this).
BackwardRule l2norm(ValueId x, ValueId out, int dim) {
  return [=](GradContext& c) {
    backward_node(c, "l2norm_backward", out, {x, c.grad(out)}, {{x, true}},
                  [dim](Ins in, Grads& g) { kernels::l2norm_backward(in[0], in[1], g[0], dim); });
  };
}

}  // namespace mfuser::model::grad
