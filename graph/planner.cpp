#include "graph/planner.h"

#include <algorithm>
#include <map>

namespace mfuser::graph {

namespace {

// Free byte ranges of the arena, keyed by offset, kept merged.
class FreeList {
 public:
  size_t allocate(size_t size, size_t& arena_end) {
    auto best = blocks_.end();
    for (auto it = blocks_.begin(); it != blocks_.end(); ++it)
      if (it->second >= size && (best == blocks_.end() || it->second < best->second)) best = it;
    if (best != blocks_.end()) {
      const size_t offset = best->first, left = best->second - size;
      blocks_.erase(best);
      if (left) blocks_.emplace(offset + size, left);
      return offset;
    }
    // Nothing fits: grow the arena, starting inside a free block that touches its end if there is one.
    size_t offset = arena_end;
    if (!blocks_.empty()) {
      auto last = std::prev(blocks_.end());
      if (last->first + last->second == arena_end) {
        offset = last->first;
        blocks_.erase(last);
      }
    }
    arena_end = offset + size;
    return offset;
  }

  void release(size_t offset, size_t size) {
    auto [it, inserted] = blocks_.emplace(offset, size);
    MFUSER_CHECK(inserted, "planner: double free at offset ", offset);
    if (auto next = std::next(it); next != blocks_.end() && it->first + it->second == next->first) {
      it->second += next->second;
      blocks_.erase(next);
    }
    if (it != blocks_.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == it->first) {
        prev->second += it->second;
        blocks_.erase(it);
      }
    }
  }

 private:
  std::map<size_t, size_t> blocks_;
};

}  // namespace

MemoryPlan plan_memory(const Graph& graph, size_t alignment) {
  const auto& values = graph.values();
  const auto& nodes = graph.nodes();
  const int end_of_run = int(nodes.size());
  MemoryPlan plan;
  plan.alignment = alignment;
  plan.offset.assign(values.size(), kNotInArena);
  plan.first_node.assign(values.size(), -1);
  plan.last_node.assign(values.size(), -1);

  const auto is_root_intermediate = [&](ValueId id) {
    return values[size_t(id)].kind == ValueKind::intermediate && values[size_t(id)].alias_of == kNoValue;
  };
  for (ValueId id = 0; id < ValueId(values.size()); ++id)
    if (is_root_intermediate(id)) plan.first_node[size_t(id)] = plan.last_node[size_t(id)] = values[size_t(id)].producer;
  for (int n = 0; n < end_of_run; ++n)
    for (ValueId in : nodes[size_t(n)].inputs) {
      const ValueId root = graph.root_of(in);
      if (is_root_intermediate(root)) plan.last_node[size_t(root)] = std::max(plan.last_node[size_t(root)], n);
    }
  for (ValueId out : graph.outputs()) {
    const ValueId root = graph.root_of(out);
    if (is_root_intermediate(root)) plan.last_node[size_t(root)] = end_of_run;
  }

  // Roots to free after each node.
  std::vector<std::vector<ValueId>> dies_after(size_t(end_of_run) + 1);
  for (ValueId id = 0; id < ValueId(values.size()); ++id)
    if (is_root_intermediate(id)) dies_after[size_t(plan.last_node[size_t(id)])].push_back(id);

  const auto aligned = [&](size_t bytes) { return std::max<size_t>(alignment, (bytes + alignment - 1) / alignment * alignment); };
  FreeList free_list;
  for (int n = 0; n < end_of_run; ++n) {
    for (ValueId out : nodes[size_t(n)].outputs) {
      if (!is_root_intermediate(out)) continue;
      const size_t size = aligned(values[size_t(out)].nbytes());
      plan.offset[size_t(out)] = free_list.allocate(size, plan.arena_bytes);
      plan.naive_bytes += size;
    }
    for (ValueId dead : dies_after[size_t(n)])
      free_list.release(plan.offset[size_t(dead)], aligned(values[size_t(dead)].nbytes()));
  }
  return plan;
}

}  // namespace mfuser::graph
