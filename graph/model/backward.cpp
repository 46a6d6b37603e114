#include "graph/model/backward.h"

#include <algorithm>

#include "graph/model/builder.h"

namespace mfuser::model {

ValueId GradContext::grad(ValueId forward_output) const {
  const auto it = grads_.find(forward_output);
  return it == grads_.end() ? graph::kNoValue : it->second;
}

bool GradContext::wants(ValueId forward_input) const {
  return forward_input != graph::kNoValue && size_t(forward_input) < requires_grad_.size() &&
         requires_grad_[size_t(forward_input)];
}

void GradContext::accumulate(ValueId forward_input, ValueId grad) {
  if (!wants(forward_input)) return;
  Graph& g = b_.graph();
  MFUSER_CHECK(g.value(grad).shape == g.value(forward_input).shape, "backward: the gradient of '",
               g.value(forward_input).name, "' has shape ", g.value(grad).shape.str(), ", expected ",
               g.value(forward_input).shape.str());
  const auto [it, first] = grads_.emplace(forward_input, grad);
  if (first) return;
  // A value used more than once: its gradient is the sum over uses, added in reverse use order.
  it->second = b_.add(it->second, grad, str_cat(g.value(forward_input).name, ".grad.sum", g.values().size()));
}

std::string GradContext::name(ValueId forward, const std::string& suffix) const {
  return str_cat(b_.graph().value(forward).name, ".grad", suffix);
}

ValueId Gradients::at(ValueId forward) const {
  const auto it = of.find(forward);
  MFUSER_CHECK(it != of.end(), "backward: value ", forward, " got no gradient");
  return it->second;
}

Gradients build_backward(Builder& b, const Tape& tape, const std::map<ValueId, ValueId>& seeds,
                         const std::vector<ValueId>& wrt) {
  Graph& g = b.graph();
  std::vector<bool> requires_grad(g.values().size(), false);
  for (ValueId v : wrt) requires_grad.at(size_t(v)) = true;
  const auto any_requires = [&](const std::vector<ValueId>& ids) {
    return std::any_of(ids.begin(), ids.end(),
                       [&](ValueId v) { return v != graph::kNoValue && requires_grad[size_t(v)]; });
  };
  for (const TapeEntry& e : tape.entries())
    if (any_requires(e.inputs))
      for (ValueId out : e.outputs) requires_grad[size_t(out)] = true;

  Gradients result;
  result.of = seeds;
  // The backward ops are plain nodes: nothing records them (no double backward).
  Tape* const forward_tape = b.tape();
  b.set_tape(nullptr);
  GradContext ctx(b, requires_grad, result.of);
  const auto& entries = tape.entries();
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
    const bool has_output_grad = std::any_of(it->outputs.begin(), it->outputs.end(),
                                             [&](ValueId v) { return result.of.contains(v); });
    if (has_output_grad && any_requires(it->inputs)) it->rule(ctx);
  }
  b.set_tape(forward_tape);

  for (ValueId v : wrt) {
    const auto it = result.of.find(v);
    if (it == result.of.end()) continue;  // the loss does not depend on it
    it->second = g.reshape(it->second, g.value(v).shape, "grad." + g.value(v).name);
    g.mark_output(it->second);
  }
  return result;
}

}  // namespace mfuser::model
