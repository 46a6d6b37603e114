#include "graph/model/weights.h"

#include <sstream>

namespace mfuser::model {

WeightStore::WeightStore(const std::string& path) : reader_(path) {}

std::optional<std::vector<int64_t>> WeightStore::shape_of(const std::string& name) {
  const SafetensorsEntry* e = reader_.find(name);
  if (!e) {
    problems_.push_back(str_cat("missing tensor '", name, "'"));
    return std::nullopt;
  }
  return e->shape;
}

Tensor WeightStore::get(const std::string& name, const Shape& expected) {
  used_.insert(name);
  const SafetensorsEntry* e = reader_.find(name);
  if (!e) {
    problems_.push_back(str_cat("missing tensor '", name, "' (expected F32", expected.str(), ")"));
    return Tensor::zeros(expected, DType::f32);
  }
  const bool shape_ok = e->shape.size() == size_t(expected.ndim()) &&
                        std::equal(e->shape.begin(), e->shape.end(), expected.dims().begin());
  if (!shape_ok) {
    problems_.push_back(str_cat("tensor '", name, "' has shape ", Shape(std::span(e->shape)).str(), ", expected ",
                                expected.str()));
    return Tensor::zeros(expected, DType::f32);
  }
  try {
    // f32 tensors stay zero-copy views of the mapped file; other float types are converted once.
    return e->dtype == "F32" ? reader_.view(name) : reader_.load(name, DType::f32);
  } catch (const SafetensorsError& err) {
    problems_.push_back(err.what());
    return Tensor::zeros(expected, DType::f32);
  }
}

Tensor WeightStore::get_raw(const std::string& name, DType expected_dtype, const Shape& expected) {
  used_.insert(name);
  const SafetensorsEntry* e = reader_.find(name);
  if (!e) {
    problems_.push_back(str_cat("missing tensor '", name, "' (expected ", dtype_name(expected_dtype), expected.str(), ")"));
    return Tensor::zeros(expected, expected_dtype);
  }
  if (e->dtype != dtype_name(expected_dtype) || e->shape.size() != size_t(expected.ndim()) ||
      !std::equal(e->shape.begin(), e->shape.end(), expected.dims().begin())) {
    problems_.push_back(str_cat("tensor '", name, "' is ", e->dtype, Shape(std::span(e->shape)).str(), ", expected ",
                                dtype_name(expected_dtype), expected.str()));
    return Tensor::zeros(expected, expected_dtype);
  }
  return reader_.load(name);
}

void WeightStore::ignore(const std::string& name) { used_.insert(name); }

void WeightStore::finish() const {
  std::vector<std::string> all = problems_;
  for (const SafetensorsEntry& e : reader_.entries())
    if (!used_.contains(e.name)) all.push_back(str_cat("unexpected tensor '", e.name, "'"));
  if (all.empty()) return;
  std::ostringstream os;
  os << reader_.path() << ": " << all.size() << " problem(s) with the weights:";
  constexpr size_t kShown = 40;
  for (size_t i = 0; i < all.size() && i < kShown; ++i) os << "\n  " << all[i];
  if (all.size() > kShown) os << "\n  ... and " << all.size() - kShown << " more";
  throw Error(os.str());
}

}  // namespace mfuser::model
