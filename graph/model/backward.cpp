#include "graph/model/backward.h"

#include <algorithm>
#include <set>

#include "graph/model/builder.h"

namespace mfuser::model {

namespace {

// Appends the copy of `segment`'s forward nodes and views (the rules are in backward.h) and returns the remap
// its rules read through: internal, non-escaping value -> its copy.
std::map<ValueId, ValueId> recompute_segment(Graph& g, const CheckpointSegment& segment) {
  const auto internal_root = [&](ValueId root) {
    const graph::Value& v = g.value(root);
    return v.kind == graph::ValueKind::intermediate && v.alias_of == graph::kNoValue &&
           v.producer >= segment.first_node && v.producer < segment.end_node;
  };
  std::set<ValueId> escaping;
  const auto note_read = [&](ValueId read) {
    if (const ValueId root = g.root_of(read); internal_root(root)) escaping.insert(root);
  };
  for (size_t n = size_t(segment.end_node); n < g.nodes().size(); ++n)
    for (const ValueId in : g.nodes()[n].inputs) note_read(in);
  for (const ValueId out : g.outputs()) note_read(out);

  std::map<ValueId, ValueId> copies;
  const auto read = [&](ValueId v) {
    const auto it = copies.find(v);
    return it == copies.end() ? v : it->second;
  };
  // In creation order: a node's inputs and a view's base were made before it.
  for (ValueId v = segment.first_value; v < segment.end_value; ++v) {
    const graph::Value value = g.value(v);  // a copy: appending moves the originals
    const ValueId root = g.root_of(v);
    if (!internal_root(root) || escaping.contains(root) || copies.contains(v)) continue;
    if (value.alias_of != graph::kNoValue) {
      copies[v] = g.view(read(value.alias_of), value.shape, value.alias_offset, value.name + ".recompute");
      continue;
    }
    const graph::Node node = g.nodes()[size_t(value.producer)];
    std::vector<ValueId> inputs;
    for (const ValueId in : node.inputs) inputs.push_back(read(in));
    std::vector<graph::OutputSpec> specs;
    for (const ValueId out : node.outputs) specs.push_back({g.value(out).shape, g.value(out).dtype});
    const std::vector<ValueId> outs =
        g.add(node.op, node.name + ".recompute", std::move(inputs), std::move(specs), node.run);
    for (size_t k = 0; k < outs.size(); ++k)
      if (!escaping.contains(node.outputs[k])) copies[node.outputs[k]] = outs[k];
  }
  return copies;
}

}  // namespace

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
  // Every gradient has its value's dtype: one computed in another (an f32 loss over bf16 logits, BatchNorm's
  // f32 channel sums for bf16 weights) is converted here.
  if (g.value(grad).dtype != g.value(forward_input).dtype)
    grad = b_.cast(grad, g.value(forward_input).dtype,
                   str_cat(g.value(forward_input).name, ".grad.cast", g.values().size()));
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
                         const std::vector<ValueId>& wrt, const BackwardOptions& options) {
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
  std::vector<int> segment_of(entries.size(), -1);  // entry -> the segment it belongs to, when recomputing
  if (options.recompute)
    for (size_t s = 0; s < tape.segments().size(); ++s)
      std::fill(segment_of.begin() + ptrdiff_t(tape.segments()[s].first_entry),
                segment_of.begin() + ptrdiff_t(tape.segments()[s].end_entry), int(s));
  // wrt values by the tape entry of their first use: their gradients are complete once it has run.
  std::multimap<size_t, ValueId> completed_after;
  if (options.on_complete) {
    std::map<ValueId, size_t> first_use;
    for (size_t i = entries.size(); i-- > 0;)
      for (ValueId v : entries[i].inputs)
        if (v != graph::kNoValue) first_use[v] = i;
    for (ValueId v : wrt)
      if (const auto it = first_use.find(v); it != first_use.end()) completed_after.emplace(it->second, v);
  }
  int recomputed = -1;  // the segment whose copies the rules read now
  const auto run_entry = [&](size_t i) {
    const TapeEntry& e = entries[i];
    if (segment_of[i] != recomputed) {  // left the segment: later nodes read the originals again
      g.set_read_remap({});
      recomputed = -1;
    }
    const bool has_output_grad =
        std::any_of(e.outputs.begin(), e.outputs.end(), [&](ValueId v) { return result.of.contains(v); });
    if (!has_output_grad || !any_requires(e.inputs)) return;
    if (segment_of[i] >= 0 && recomputed < 0) {  // the segment's first rule to run: recompute it now
      recomputed = segment_of[i];
      g.set_read_remap(recompute_segment(g, tape.segments()[size_t(recomputed)]));
    }
    e.rule(ctx);
  };
  for (size_t i = entries.size(); i-- > 0;) {
    run_entry(i);
    const auto [first, last] = completed_after.equal_range(i);
    for (auto it = first; it != last; ++it)
      if (const auto grad = result.of.find(it->second); grad != result.of.end())
        options.on_complete(it->second, grad->second);
  }
  g.set_read_remap({});
  b.set_tape(forward_tape);

  if (options.on_complete) return result;
  for (ValueId v : wrt) {
    const auto it = result.of.find(v);
    if (it == result.of.end()) continue;  // the loss does not depend on it
    it->second = g.reshape(it->second, g.value(v).shape, "grad." + g.value(v).name);
    g.mark_output(it->second);
  }
  return result;
}

}  // namespace mfuser::model
