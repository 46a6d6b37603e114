// The backward pass, built into the same graph as more nodes (ggml's way: build_backward_expand).
//
// While a Builder with a Tape builds the forward, every op it appends also records a backward rule: a
// hand-written function (graph/model/grad_rules.h) that, given the gradient of the op's outputs, appends the
// op's backward-kernel nodes and hands each input its gradient. `build_backward` then
//   1. marks which values need a gradient: the trainable parameters and everything computed from them;
//   2. walks the tape in reverse, calling the rule of every entry that has an output gradient and an input
//      that needs one (gradients nobody needs are never computed: a frozen weight gets no weight gradient,
//      but the activations flowing through a frozen layer do);
//   3. sums the contributions of values used more than once (`add` nodes, in tape order, deterministic).
// Backward nodes are named after their forward node plus ".grad", so errors, NVTX ranges and profiles name
// them. Forward values a rule reads simply stay alive longer (the planner sees the reads): that is the
// "saved for backward" memory.
//
// Activation checkpointing: model code brackets a block with Builder::begin_checkpoint / end_checkpoint, which
// records a CheckpointSegment on the tape. With BackwardOptions::recompute, the backward keeps only what
// enters and leaves a segment: when the reverse walk is about to run the segment's first rule, it appends a
// copy of the segment's forward nodes (same kernels; nodes and values named "<original>.recompute"), and
// while the segment's rules run, every read of one of its internal activations goes to the copy
// (Graph::set_read_remap), so the originals die right after the forward. The rules:
//   - internal: a value whose memory belongs to an intermediate produced by a node of the segment (views of it
//     included); everything else (the segment's inputs, weights, constants, values made elsewhere) is never
//     remapped;
//   - escaping: an internal value read by a node outside the segment (later forward nodes, backward nodes
//     built before) or a graph output. It is kept: never remapped, and a node whose outputs all escape (the
//     block's last residual add) is not recomputed. A recomputed node reads the copies of internal values and
//     the originals of escaping ones;
//   - gradients stay keyed by the original values (GradContext::grad / accumulate take forward ids); only the
//     inputs of nodes and views appended while the segment's rules run are redirected;
//   - segments do not nest, and a segment may not hold a node with side effects beyond its outputs
//     (training-mode BatchNorm's running statistics): end_checkpoint refuses it, naming the node;
//   - the copies run the same kernels on the same inputs, so gradients are bitwise those without recompute
//     (as long as the kernels are deterministic, which ours are).
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "graph/graph.h"

namespace mfuser::model {

class Builder;
class GradContext;

using graph::ValueId;

// Appends the backward nodes of one forward op (see GradContext for what it may ask).
using BackwardRule = std::function<void(GradContext&)>;

struct TapeEntry {
  std::vector<ValueId> inputs, outputs;  // the forward op's float inputs and outputs
  BackwardRule rule;
};

// A checkpointed block (Builder::begin_checkpoint / end_checkpoint): what was appended between the two calls.
struct CheckpointSegment {
  std::string name;
  size_t first_entry = 0, end_entry = 0;   // tape entries [first, end)
  int first_node = 0, end_node = 0;        // graph nodes [first, end)
  ValueId first_value = 0, end_value = 0;  // values (nodes' outputs, views, weights, ...) [first, end)
};

// Forward ops in build order, with their backward rules, and the checkpoint segments among them.
class Tape {
 public:
  void record(std::vector<ValueId> inputs, std::vector<ValueId> outputs, BackwardRule rule) {
    entries_.push_back({std::move(inputs), std::move(outputs), std::move(rule)});
  }
  void add_segment(CheckpointSegment segment) { segments_.push_back(std::move(segment)); }
  const std::vector<TapeEntry>& entries() const { return entries_; }
  const std::vector<CheckpointSegment>& segments() const { return segments_; }  // in build order

 private:
  std::vector<TapeEntry> entries_;
  std::vector<CheckpointSegment> segments_;
};

// What a rule sees: the gradients of its outputs, which inputs want one, and where to put them.
class GradContext {
 public:
  GradContext(Builder& b, const std::vector<bool>& requires_grad, std::map<ValueId, ValueId>& grads)
      : b_(b), requires_grad_(requires_grad), grads_(grads) {}

  Builder& builder() { return b_; }
  // d loss / d `forward_output`, or kNoValue when nothing downstream depends on it (treat as zeros).
  ValueId grad(ValueId forward_output) const;
  // Whether `forward_input` needs a gradient (kNoValue inputs never do).
  bool wants(ValueId forward_input) const;
  // Adds `grad` (same shape as `forward_input`) to the gradient of `forward_input`.
  void accumulate(ValueId forward_input, ValueId grad);
  // The name of a backward node of the forward value `forward`: "<forward name>.grad<suffix>".
  std::string name(ValueId forward, const std::string& suffix = {}) const;

 private:
  Builder& b_;
  const std::vector<bool>& requires_grad_;
  std::map<ValueId, ValueId>& grads_;
};

struct BackwardOptions {
  bool recompute = false;  // recompute the checkpoint segments' activations instead of keeping them (above)
  // Called for every `wrt` value that got a gradient, as soon as no later rule can add to it (after the rule of
  // its first use in the forward), in that order: the data-parallel trainer starts reducing a bucket of
  // gradients while the backward goes on (graph/model/distributed.h). With it, build_backward publishes nothing:
  // naming and marking the gradients "grad.<name>" is the callee's job.
  std::function<void(ValueId wrt, ValueId grad)> on_complete = {};
};

struct Gradients {
  std::map<ValueId, ValueId> of;  // forward value -> its gradient value, for every value that got one
  ValueId at(ValueId forward) const;  // throws when `forward` got no gradient
};

// Appends the backward of everything recorded on `tape` to b's graph. `seeds` are the starting gradients:
// forward value -> a value holding d loss / d it (a constant 1 for a scalar loss, or any upstream gradient).
// `wrt` are the values gradients are wanted for (trainable parameters; inputs of interest); they and the
// values computed from them are the only ones that get gradients. Each gradient of a `wrt` value is marked
// as a graph output named "grad.<value name>".
Gradients build_backward(Builder& b, const Tape& tape, const std::map<ValueId, ValueId>& seeds,
                         const std::vector<ValueId>& wrt, const BackwardOptions& options = {});

}  // namespace mfuser::model
