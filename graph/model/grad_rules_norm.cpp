// Backward rules of the normalization Builder ops. Each appends one "<op>_backward" node that reads the
// forward's input x (and the affine weight), never its output: the statistics are recomputed from x by the CPU
// backward kernels (cheap, and exact in double) except for training-mode BatchNorm, whose rule has the
// forward's saved batch statistics (f32 [C]) at hand.
#include <array>
#include <functional>
#include <string>
#include <vector>

#include "graph/model/builder.h"
#include "graph/model/grad_rules.h"
#include "kernels/batchnorm/batchnorm.h"
#include "kernels/groupnorm/groupnorm.h"
#include "kernels/l2norm/l2norm.h"
#include "kernels/layernorm/layernorm.h"
#include "kernels/rmsnorm_gated/rmsnorm_gated.h"

namespace mfuser::model::grad {

namespace {

using Ins = std::span<const Tensor>;
using Outs = std::span<Tensor>;

// One gradient a backward kernel can write: that of `input`. `required`: the kernel insists on the tensor even
// when nobody wants that gradient (e.g. grad_x of a norm whose input is a frozen leaf but whose weight trains);
// it is then a scratch output nobody reads, which the planner frees right after the node.
struct GradSlot {
  ValueId input;
  bool required;
};

constexpr size_t kMaxSlots = 3;
// The gradient tensors of a backward node, one per slot; undefined where neither wanted nor required.
using Grads = std::array<Tensor, kMaxSlots>;
using GradKernel = std::function<void(Ins in, Grads& grads)>;

// Appends the backward node `op` of the forward value `out`: it reads `inputs` and writes an f32 gradient
// (of its input's shape) for every slot that is wanted or required; the wanted ones are accumulated.
void backward_node(GradContext& c, const std::string& op, ValueId out, std::vector<ValueId> inputs,
                   const std::vector<GradSlot>& slots, GradKernel run) {
  MFUSER_CHECK(slots.size() <= kMaxSlots, "backward: ", op, " has too many gradient slots");
  Builder& b = c.builder();
  std::array<bool, kMaxSlots> computed{};
  std::vector<graph::OutputSpec> specs;
  for (size_t i = 0; i < slots.size(); ++i) {
    computed[i] = c.wants(slots[i].input) || slots[i].required;
    if (computed[i]) specs.push_back({b.shape(slots[i].input), DType::f32});
  }
  const auto grads = b.graph().add(op, c.name(out), std::move(inputs), std::move(specs),
                                   [computed, run = std::move(run)](Ins in, Outs o) {
                                     Grads g;
                                     size_t k = 0;
                                     for (size_t i = 0; i < kMaxSlots; ++i)
                                       if (computed[i]) g[i] = o[k++];
                                     run(in, g);
                                   });
  size_t k = 0;
  for (size_t i = 0; i < slots.size(); ++i)
    if (computed[i]) c.accumulate(slots[i].input, grads[k++]);  // a scratch (unwanted) gradient is dropped
}

}  // namespace

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
