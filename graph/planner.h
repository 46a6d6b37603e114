// Memory planner: gives every intermediate of a graph a byte range in one arena, reusing memory by liveness.
//
// A root intermediate (one that is not a view) lives from the node that produces it to the last node that
// reads it or any view of it; values marked as graph outputs live to the end. Nodes are visited in order; at
// each node its outputs are placed first (best fit in the free list, else at the end of the arena), then
// everything whose life ends there is freed and merged with its free neighbours. So a node's outputs never
// share memory with its inputs, and no two values alive at the same time overlap.
#pragma once

#include <cstddef>
#include <limits>
#include <vector>

#include "graph/graph.h"

namespace mfuser::graph {

constexpr size_t kNotInArena = std::numeric_limits<size_t>::max();

struct MemoryPlan {
  std::vector<size_t> offset;  // per value: arena byte offset of root intermediates, else kNotInArena
  std::vector<int> first_node;  // per value: lifetime [first_node, last_node] of root intermediates, else -1
  std::vector<int> last_node;
  size_t arena_bytes = 0;  // the planned peak
  size_t naive_bytes = 0;  // what one buffer per intermediate would take
  size_t alignment = 0;
};

MemoryPlan plan_memory(const Graph& graph, size_t alignment = 256);

}  // namespace mfuser::graph
