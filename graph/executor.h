// Executor: runs a Graph on one device.
//
// At construction it plans memory (planner.h), makes one arena allocation for all intermediates, uploads
// weights and constants once, and prebuilds each node's input/output tensors as views into that memory, so
// a run does no allocation and no lookup. Every node runs inside an OpScope (errors name the node) and an
// NVTX range named after it. On CUDA the first run is eager (kernels and libraries warm up and allocate
// their workspaces), the second is captured as a CUDA graph, and later runs replay it; set
// `cuda_graph = false` (or MFUSER_CUDA_GRAPH=0) to keep every run eager, e.g. for per-node NVTX in Nsight.
// On the CPU a bf16 graph runs too, as the reference of the CUDA one: each node widens its bf16 tensors to f32
// and rounds its outputs back (executor.cpp, run_widened).
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "graph/graph.h"
#include "graph/planner.h"
#include "runtime/cuda.h"

namespace mfuser::graph {

struct ExecutorOptions {
  bool cuda_graph = true;       // capture and replay on CUDA (MFUSER_CUDA_GRAPH=0 overrides)
  bool sync_each_node = false;  // debug: synchronize after every node so errors point at it (MFUSER_SYNC=1)
  bool profile = false;         // time every node (eager, synchronized per node): see node_seconds()
};

class Executor {
 public:
  Executor(const Graph& graph, Device device, ExecutorOptions options = {});

  // Copies `data` (any device) into the graph input `name`; shapes must match, and a float input of another
  // float type is converted (an f32 image into a bf16 graph).
  void set_input(std::string_view name, const Tensor& data);
  void run();
  // A graph output, input, weight or constant, on the executor's device (a view: copy it to keep it).
  Tensor get(std::string_view name) const;

  const MemoryPlan& plan() const { return plan_; }
  // With options.profile: seconds each node took in the last run, in node order.
  const std::vector<double>& node_seconds() const { return node_seconds_; }
  Device device() const { return device_; }

 private:
  void run_nodes();
  Tensor placed(ValueId id) const;

  const Graph& graph_;
  Device device_;
  ExecutorOptions options_;
  MemoryPlan plan_;
  Tensor arena_;
  std::vector<Tensor> roots_;  // per value: the tensor of non-arena roots (inputs, weights, constants)
  std::vector<std::vector<Tensor>> node_inputs_, node_outputs_;
  std::vector<bool> widens_;  // per node: runs widened to f32 (CPU, with bf16/f16 tensors)
  std::vector<double> node_seconds_;
  int runs_ = 0;
  std::unique_ptr<cuda::CapturedGraph> captured_;
};

}  // namespace mfuser::graph
