#include "graph/graph.h"

#include <algorithm>

namespace mfuser::graph {

namespace {
Value make_value(std::string name, const Shape& shape, DType dtype, ValueKind kind) {
  Value v;
  v.name = std::move(name);
  v.shape = shape;
  v.dtype = dtype;
  v.kind = kind;
  return v;
}
}  // namespace

ValueId Graph::add_value(Value v) {
  MFUSER_CHECK(!v.name.empty(), "graph: every value needs a name");
  MFUSER_CHECK(!by_name_.contains(v.name), "graph: value name '", v.name, "' is used twice");
  const auto id = ValueId(values_.size());
  by_name_.emplace(v.name, id);
  values_.push_back(std::move(v));
  return id;
}

void Graph::check_id(ValueId id) const {
  MFUSER_CHECK(id >= 0 && size_t(id) < values_.size(), "graph: value id ", id, " does not exist");
}

ValueId Graph::remapped(ValueId id) const {
  const auto it = read_remap_.find(id);
  return it == read_remap_.end() ? id : it->second;
}

ValueId Graph::input(std::string name, const Shape& shape, DType dtype) {
  return add_value(make_value(std::move(name), shape, dtype, ValueKind::input));
}

ValueId Graph::weight(std::string name, Tensor data) {
  MFUSER_CHECK(data.defined() && data.device().is_cpu(), "graph: weight '", name, "' must be a host tensor");
  Value v = make_value(std::move(name), data.shape(), data.dtype(), ValueKind::weight);
  v.bound = std::move(data);
  return add_value(std::move(v));
}

ValueId Graph::constant(std::string name, Tensor data) {
  MFUSER_CHECK(data.defined() && data.device().is_cpu(), "graph: constant '", name, "' must be a host tensor");
  Value v = make_value(std::move(name), data.shape(), data.dtype(), ValueKind::constant);
  v.bound = std::move(data);
  return add_value(std::move(v));
}

std::vector<ValueId> Graph::add(std::string op, std::string name, std::vector<ValueId> inputs,
                                std::vector<OutputSpec> outputs, Kernel run) {
  MFUSER_CHECK(run, "graph: node '", name, "' has no kernel");
  MFUSER_CHECK(!outputs.empty(), "graph: node '", name, "' has no outputs");
  for (ValueId& in : inputs) {
    check_id(in);
    in = remapped(in);
  }
  const int node = int(nodes_.size());
  std::vector<ValueId> ids;
  for (size_t k = 0; k < outputs.size(); ++k) {
    Value v = make_value(outputs.size() == 1 ? name : str_cat(name, '.', k), outputs[k].shape, outputs[k].dtype,
            ValueKind::intermediate);
    v.producer = node;
    ids.push_back(add_value(std::move(v)));
  }
  nodes_.push_back({std::move(name), std::move(op), std::move(inputs), ids, std::move(run)});
  return ids;
}

ValueId Graph::add1(std::string op, std::string name, std::vector<ValueId> inputs, OutputSpec output, Kernel run) {
  return add(std::move(op), std::move(name), std::move(inputs), {output}, std::move(run)).front();
}

ValueId Graph::reshape(ValueId base, const Shape& shape, std::string name) {
  check_id(base);
  base = remapped(base);
  const Value& b = values_[size_t(base)];
  MFUSER_CHECK(shape.numel() == b.shape.numel(), "graph: reshape of '", b.name, "' ", b.shape.str(), " to ",
               shape.str());
  return add_view(base, shape, 0, name.empty() ? str_cat(b.name, ".view", shape.str()) : std::move(name));
}

ValueId Graph::slice_rows(ValueId base, int64_t begin, int64_t end, std::string name) {
  check_id(base);
  base = remapped(base);
  const Value& b = values_[size_t(base)];
  MFUSER_CHECK(b.shape.ndim() >= 1 && 0 <= begin && begin <= end && end <= b.shape[0], "graph: slice_rows [",
               begin, ", ", end, ") of '", b.name, "' ", b.shape.str());
  Shape shape = b.shape;
  shape[0] = end - begin;
  const size_t row_bytes = b.shape[0] ? b.nbytes() / size_t(b.shape[0]) : 0;
  return add_view(base, shape, size_t(begin) * row_bytes,
                  name.empty() ? str_cat(b.name, ".rows[", begin, ':', end, ']') : std::move(name));
}

ValueId Graph::view(ValueId base, const Shape& shape, size_t byte_offset, std::string name) {
  check_id(base);
  return add_view(remapped(base), shape, byte_offset, std::move(name));
}

ValueId Graph::add_view(ValueId base, const Shape& shape, size_t byte_offset, std::string name) {
  const Value& b = values_[size_t(base)];
  Value v = make_value(std::move(name), shape, b.dtype, b.kind);
  MFUSER_CHECK(byte_offset + v.nbytes() <= b.nbytes(), "graph: view '", v.name, "' ", shape.str(), " at byte ",
               byte_offset, " does not fit in '", b.name, "' ", b.shape.str());
  v.producer = b.producer;
  v.alias_of = base;
  v.alias_offset = byte_offset;
  return add_value(std::move(v));
}

void Graph::mark_output(ValueId id) {
  check_id(id);
  if (!is_output(id)) outputs_.push_back(id);
}

bool Graph::is_output(ValueId id) const { return std::find(outputs_.begin(), outputs_.end(), id) != outputs_.end(); }

const Value& Graph::value(ValueId id) const {
  check_id(id);
  return values_[size_t(id)];
}

ValueId Graph::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? kNoValue : it->second;
}

ValueId Graph::at(std::string_view name) const {
  const ValueId id = find(name);
  MFUSER_CHECK(id != kNoValue, "graph: no value named '", name, "'");
  return id;
}

ValueId Graph::root_of(ValueId id, size_t* offset) const {
  check_id(id);
  size_t total = 0;
  while (values_[size_t(id)].alias_of != kNoValue) {
    total += values_[size_t(id)].alias_offset;
    id = values_[size_t(id)].alias_of;
  }
  if (offset) *offset = total;
  return id;
}

}  // namespace mfuser::graph
