#include "graph/executor.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "kernels/cast/cast.h"
#include "runtime/log.h"
#include "runtime/op_context.h"

namespace mfuser::graph {

namespace {
bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v && std::strcmp(v, value) == 0;
}

bool is_half_float(const Tensor& t) { return t.defined() && is_floating(t.dtype()) && t.dtype() != DType::f32; }

// The CPU kernels compute in f32 on f32 tensors. A node with bf16 (or f16) tensors runs on the CPU as the CUDA
// kernels run it: every input widened to f32, f32 arithmetic, every output rounded once on store. That makes
// the CPU the reference of a whole bf16 graph (the same rounding sites), at the cost of a copy per tensor.
// Outputs are widened too: some kernels accumulate into them.
void run_widened(const Node& node, std::span<const Tensor> inputs, std::span<Tensor> outputs) {
  const auto widened = [](const Tensor& t) { return is_half_float(t) ? kernels::cast_to(t, DType::f32) : t; };
  std::vector<Tensor> wide_inputs, wide_outputs;
  for (const Tensor& t : inputs) wide_inputs.push_back(widened(t));
  for (const Tensor& t : outputs) wide_outputs.push_back(widened(t));
  node.run(wide_inputs, wide_outputs);
  for (size_t k = 0; k < outputs.size(); ++k)
    if (is_half_float(outputs[k])) kernels::cast(wide_outputs[k], outputs[k]);
}
}  // namespace

Executor::Executor(const Graph& graph, Device device, ExecutorOptions options)
    : graph_(graph), device_(device), options_(options), plan_(plan_memory(graph)) {
  if (env_is("MFUSER_CUDA_GRAPH", "0")) options_.cuda_graph = false;
  if (env_is("MFUSER_SYNC", "1")) options_.sync_each_node = true;
  if (options_.profile) options_.sync_each_node = true;  // per-node times need per-node completion
  arena_ = Tensor::empty({int64_t(plan_.arena_bytes)}, DType::u8, device_);
  log::debug("executor: ", graph_.nodes().size(), " nodes, arena ", plan_.arena_bytes, " bytes (naive ",
             plan_.naive_bytes, ") on ", device_.str());

  const auto& values = graph_.values();
  roots_.resize(values.size());
  for (size_t id = 0; id < values.size(); ++id) {
    const Value& v = values[id];
    if (v.alias_of != kNoValue) continue;
    switch (v.kind) {
      case ValueKind::weight:
      case ValueKind::constant:
        roots_[id] = device_.is_cpu() ? v.bound : v.bound.to(device_);
        break;
      case ValueKind::input:
        roots_[id] = Tensor::empty(v.shape, v.dtype, device_);
        break;
      case ValueKind::intermediate:
        break;  // lives in the arena
    }
  }
  for (const Node& node : graph_.nodes()) {
    std::vector<Tensor> ins, outs;
    for (ValueId in : node.inputs) ins.push_back(placed(in));
    for (ValueId out : node.outputs) outs.push_back(placed(out));
    const auto half = [](const std::vector<Tensor>& ts) { return std::ranges::any_of(ts, is_half_float); };
    widens_.push_back(device_.is_cpu() && (half(ins) || half(outs)));
    node_inputs_.push_back(std::move(ins));
    node_outputs_.push_back(std::move(outs));
  }
}

Tensor Executor::placed(ValueId id) const {
  size_t offset = 0;
  const ValueId root = graph_.root_of(id, &offset);
  const Value& v = graph_.value(id);
  if (plan_.offset[size_t(root)] != kNotInArena)
    return Tensor(arena_.storage(), arena_.byte_offset() + plan_.offset[size_t(root)] + offset, v.shape, v.dtype);
  const Tensor& base = roots_[size_t(root)];
  return Tensor(base.storage(), base.byte_offset() + offset, v.shape, v.dtype);
}

void Executor::set_input(std::string_view name, const Tensor& data) {
  const ValueId id = graph_.at(name);
  const Value& v = graph_.value(id);
  MFUSER_CHECK(v.kind == ValueKind::input && v.alias_of == kNoValue, "executor: '", name, "' is not a graph input");
  const bool converts = data.dtype() != v.dtype && is_floating(data.dtype()) && is_floating(v.dtype);
  MFUSER_CHECK(data.shape() == v.shape && (data.dtype() == v.dtype || converts), "executor: input '", name,
               "' expects ", dtype_name(v.dtype), v.shape.str(), ", got ", data.str());
  if (!converts) return roots_[size_t(id)].copy_from(data);
  // Another float type (an f32 image into a bf16 graph): convert on the executor's device.
  kernels::cast(data.device() == device_ ? data : data.to(device_), roots_[size_t(id)]);
}

void Executor::run_nodes() {
  const auto& nodes = graph_.nodes();
  if (options_.profile) node_seconds_.assign(nodes.size(), 0.0);
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& node = nodes[i];
    OpScope scope(node.name);
    cuda::NvtxRange range(node.name.c_str());
    try {
      const auto start = std::chrono::steady_clock::now();
      if (widens_[i])
        run_widened(node, node_inputs_[i], node_outputs_[i]);
      else
        node.run(node_inputs_[i], node_outputs_[i]);
      if (options_.sync_each_node && device_.is_cuda()) cuda::synchronize(device_.index);
      if (options_.profile)
        node_seconds_[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    } catch (const Error& e) {
      throw Error(str_cat("node '", node.name, "' (", node.op, "): ", e.what()));
    }
  }
}

void Executor::run() {
  ++runs_;
  if (device_.is_cuda() && options_.cuda_graph && !options_.sync_each_node && runs_ >= 2) {
    if (!captured_) captured_ = cuda::capture(device_.index, [this] { run_nodes(); });
    captured_->replay();
  } else {
    run_nodes();
  }
  if (device_.is_cuda()) cuda::synchronize(device_.index);
}

Tensor Executor::get(std::string_view name) const {
  const ValueId id = graph_.at(name);
  const Value& v = graph_.value(id);
  MFUSER_CHECK(v.kind != ValueKind::intermediate || graph_.is_output(id) || graph_.is_output(graph_.root_of(id)),
               "executor: '", name, "' is an intermediate whose memory is reused; mark it as a graph output to read it");
  return placed(id);
}

}  // namespace mfuser::graph
