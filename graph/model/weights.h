// WeightStore: the model's weights from one safetensors file, checked against what the model expects.
//
// The model builder asks for each tensor by its official state-dict name with the shape the config implies.
// Problems are collected rather than thrown one at a time, so `finish()` can report every missing,
// wrong-shaped and unexpected tensor of a checkpoint in one error, each by name.
#pragma once

#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "loaders/safetensors.h"
#include "runtime/tensor.h"

namespace mfuser::model {

class WeightStore {
 public:
  explicit WeightStore(const std::string& path);
  // No file: every tensor asked for is made up (seeded, see synthesize_tensor in weights.cpp) and kept, so
  // `synthesized()` can be written out as a complete checkpoint of the architecture (`mfuser init`).
  static WeightStore synthesize(uint64_t seed);

  // The tensor `name` as a host f32 tensor (converted from bf16/f16/f64 if stored so) of shape `expected`.
  // On a problem, records it and returns a zero tensor of the expected shape so building can go on.
  Tensor get(const std::string& name, const Shape& expected);
  // Integer tensors (token ids, counters) as stored.
  Tensor get_raw(const std::string& name, DType expected_dtype, const Shape& expected);
  // The stored shape (for sizes read from the checkpoint), or nullopt (recorded as missing).
  std::optional<std::vector<int64_t>> shape_of(const std::string& name);
  bool contains(const std::string& name) const;

  // Marks tensors the runtime deliberately does not use (e.g. training-only buffers); synthesized weights
  // still get them, so a made-up checkpoint is a complete state dict.
  void ignore(const std::string& name, const Shape& shape, DType dtype = DType::f32);
  bool synthesizing() const { return !reader_; }
  // Training: get() returns the tensors whose name `owned` accepts as owned, writable host copies instead of
  // zero-copy views of the (read-only) mapped file, so an optimizer can update the graph's bound weights in
  // place. Synthesized tensors are always owned. Set it before building.
  void set_owned(std::function<bool(const std::string&)> owned) { owned_ = std::move(owned); }
  // Throws one Error listing every problem, naming the file and each tensor; no-op when all is well.
  void finish() const;

  const std::string& path() const { return path_; }
  // The made-up tensors, in the order they were asked for (synthesize mode only).
  const std::vector<std::pair<std::string, Tensor>>& synthesized() const { return synthesized_; }

 private:
  WeightStore() = default;
  Tensor make_up(const std::string& name, DType dtype, const Shape& shape);

  std::string path_;
  std::optional<SafetensorsReader> reader_;  // empty in synthesize mode
  uint64_t seed_ = 0;
  std::vector<std::pair<std::string, Tensor>> synthesized_;
  std::set<std::string> used_;
  std::vector<std::string> problems_;
  std::function<bool(const std::string&)> owned_;
};

}  // namespace mfuser::model
