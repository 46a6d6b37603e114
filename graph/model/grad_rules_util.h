// Shared by the backward rules (grad_rules_*.cpp): one backward node writing a few optional gradients.
#pragma once

#include <array>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "graph/model/builder.h"
#include "graph/model/grad_rules.h"

namespace mfuser::model::grad::detail {

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

// Appends the backward node `op` of the forward value `out`: it reads `inputs` and writes a gradient (of its
// input's shape and dtype) for every slot that is wanted or required; the wanted ones are accumulated.
inline void backward_node(GradContext& c, const std::string& op, ValueId out, std::vector<ValueId> inputs,
                   const std::vector<GradSlot>& slots, GradKernel run) {
  MFUSER_CHECK(slots.size() <= kMaxSlots, "backward: ", op, " has too many gradient slots");
  Builder& b = c.builder();
  std::array<bool, kMaxSlots> computed{};
  std::vector<graph::OutputSpec> specs;
  for (size_t i = 0; i < slots.size(); ++i) {
    computed[i] = c.wants(slots[i].input) || slots[i].required;
    if (computed[i]) specs.push_back(b.spec(slots[i].input));
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


}  // namespace mfuser::model::grad::detail
