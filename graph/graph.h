// Graph: a model built once, for one set of input shapes, into a flat list of nodes.
//
// Values are tensors with a static shape and dtype: graph inputs (bound before each run), weights and
// constants (bound at build time, read-only), and intermediates (given memory by the planner). A view
// (reshape, row slice) is a value that aliases another value's memory and costs nothing at run time.
// A node names an operator instance ("backbone.adapter.7.scan"), lists the values it reads and writes, and
// carries a kernel closure with its attributes bound. The graph knows nothing of MFuser or of devices: the
// kernels dispatch on their tensors' device, so the same graph runs on CPU or CUDA. A backward pass is more
// nodes appended to the same graph; reading forward values from them simply extends their lifetime.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/tensor.h"

namespace mfuser::graph {

using ValueId = int32_t;
constexpr ValueId kNoValue = -1;

enum class ValueKind : uint8_t { input, weight, constant, intermediate };

struct Value {
  std::string name;
  Shape shape;
  DType dtype = DType::f32;
  ValueKind kind = ValueKind::intermediate;
  int producer = -1;            // index of the producing node; -1 for inputs, weights, constants
  ValueId alias_of = kNoValue;  // for views: the value whose memory this one shares
  size_t alias_offset = 0;      // byte offset of the view inside that value
  Tensor bound;                 // weights and constants: their data (host), bound at build time

  size_t nbytes() const { return size_t(shape.numel()) * dtype_size(dtype); }
};

// A kernel gets the node's input tensors and its output tensors, already placed in memory.
using Kernel = std::function<void(std::span<const Tensor> inputs, std::span<Tensor> outputs)>;

struct Node {
  std::string name;  // unique, human readable: shows up in errors, NVTX ranges and --dump
  std::string op;    // operator kind: "layernorm", "gemm", ...
  std::vector<ValueId> inputs;
  std::vector<ValueId> outputs;
  Kernel run;
};

struct OutputSpec {
  Shape shape;
  DType dtype = DType::f32;
};

class Graph {
 public:
  ValueId input(std::string name, const Shape& shape, DType dtype = DType::f32);
  ValueId weight(std::string name, Tensor data);
  ValueId constant(std::string name, Tensor data);

  // Appends a node; returns its output values (named `name`, or `name.k` when there are several).
  std::vector<ValueId> add(std::string op, std::string name, std::vector<ValueId> inputs,
                           std::vector<OutputSpec> outputs, Kernel run);
  ValueId add1(std::string op, std::string name, std::vector<ValueId> inputs, OutputSpec output, Kernel run);

  // Zero-cost views of `base` (any kind): same bytes, another shape; or rows [begin, end) of dim 0; or any
  // `shape` starting `byte_offset` bytes into `base` (what the other two make; copies a view onto another base).
  ValueId reshape(ValueId base, const Shape& shape, std::string name = {});
  ValueId slice_rows(ValueId base, int64_t begin, int64_t end, std::string name = {});
  ValueId view(ValueId base, const Shape& shape, size_t byte_offset, std::string name);

  // Activation recomputation (model/backward.h): while a remap is set, every value that a new node or view
  // reads is looked up in it and replaced by its mapped value (a recomputed copy); values not in it are read
  // as they are. Nodes and views made before are untouched. An empty map switches it off.
  void set_read_remap(std::map<ValueId, ValueId> remap) { read_remap_ = std::move(remap); }

  // Keeps a value alive to the end of the run so it can be read afterwards (final results, --dump, tests).
  void mark_output(ValueId id);
  bool is_output(ValueId id) const;

  const Value& value(ValueId id) const;
  const std::vector<Value>& values() const { return values_; }
  const std::vector<Node>& nodes() const { return nodes_; }
  const std::vector<ValueId>& outputs() const { return outputs_; }
  ValueId find(std::string_view name) const;  // kNoValue if absent
  ValueId at(std::string_view name) const;    // throws, naming the value
  // The value owning the memory of `id` (follows view chains), and `id`'s byte offset inside it.
  ValueId root_of(ValueId id, size_t* offset = nullptr) const;

 private:
  ValueId add_value(Value v);
  void check_id(ValueId id) const;
  ValueId remapped(ValueId id) const;
  ValueId add_view(ValueId base, const Shape& shape, size_t byte_offset, std::string name);  // base: remapped

  std::vector<Value> values_;
  std::vector<Node> nodes_;
  std::vector<ValueId> outputs_;
  std::map<std::string, ValueId, std::less<>> by_name_;
  std::map<ValueId, ValueId> read_remap_;
};

}  // namespace mfuser::graph
