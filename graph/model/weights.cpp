#include "graph/model/weights.h"

#include <cmath>
#include <functional>
#include <random>
#include <sstream>

namespace mfuser::model {

namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The 19 Cityscapes class names in CLIP's BPE, context length 5 (SOT ... EOT, zero padded), for synthesized
// checkpoints; converted ones carry their own `texts`.
constexpr int64_t kCityscapesTokenIds[19][5] = {
    {49406, 1759, 49407, 0, 0},  {49406, 23278, 49407, 0, 0}, {49406, 2307, 49407, 0, 0},
    {49406, 2569, 49407, 0, 0},  {49406, 12679, 49407, 0, 0}, {49406, 8170, 49407, 0, 0},
    {49406, 3399, 1395, 49407, 0}, {49406, 3399, 2292, 49407, 0}, {49406, 33947, 49407, 0, 0},
    {49406, 20184, 49407, 0, 0}, {49406, 2390, 49407, 0, 0},  {49406, 2533, 49407, 0, 0},
    {49406, 9707, 49407, 0, 0},  {49406, 1615, 49407, 0, 0},  {49406, 4629, 49407, 0, 0},
    {49406, 2840, 49407, 0, 0},  {49406, 3231, 49407, 0, 0},  {49406, 10297, 49407, 0, 0},
    {49406, 11652, 49407, 0, 0}};

}  // namespace

WeightStore::WeightStore(const std::string& path) : path_(path), reader_(std::in_place, path) {}

WeightStore WeightStore::synthesize(uint64_t seed) {
  WeightStore w;
  w.path_ = "<synthesized>";
  w.seed_ = seed;
  return w;
}

bool WeightStore::contains(const std::string& name) const { return reader_ && reader_->contains(name); }

// Made-up weights that keep activations O(1): unit norms, zero biases, N(0, 1/fan_in) matrices, Mamba's
// structural A_log and a small dt, small residual gains. Each tensor's values depend only on the seed and its
// name, not on the order of requests.
Tensor WeightStore::make_up(const std::string& name, DType dtype, const Shape& shape) {
  Tensor t = Tensor::zeros(shape, dtype);
  if (dtype == DType::i64) {
    if (name == "texts") {
      MFUSER_CHECK(shape == (Shape{19, 5}), "synthesized weights: 'texts' must be [19, 5] (Cityscapes)");
      std::copy(&kCityscapesTokenIds[0][0], &kCityscapesTokenIds[0][0] + 95, t.data<int64_t>());
    }
    synthesized_.emplace_back(name, t);
    return t;
  }
  float* v = t.data<float>();
  const int64_t n = t.numel();
  const auto fill = [&](float value) { std::fill(v, v + n, value); };
  std::mt19937_64 rng(seed_ ^ std::hash<std::string>{}(name));
  const auto normal = [&](double std) {
    std::normal_distribution<float> dist(0.f, float(std));
    for (int64_t i = 0; i < n; ++i) v[i] = dist(rng);
  };
  if (ends_with(name, ".bias") && !ends_with(name, "dt_proj.bias")) {
    fill(0.f);
  } else if (ends_with(name, "running_mean")) {
    fill(0.f);
  } else if (ends_with(name, "running_var") || ends_with(name, ".D")) {
    fill(1.f);
  } else if (ends_with(name, "A_log")) {  // Mamba: A = -(1 .. d_state) for every channel
    for (int64_t i = 0; i < n; ++i) v[i] = std::log(float(i % shape[-1] + 1));
  } else if (ends_with(name, "dt_proj.bias")) {
    fill(std::log(std::expm1(0.01f)));  // softplus^-1 of a step of 0.01
  } else if (ends_with(name, ".scale") || ends_with(name, "gamma")) {
    fill(0.1f);  // residual gains (MVFuser scale, LayerScale, the text update)
  } else if (shape.ndim() == 1 && ends_with(name, ".weight")) {
    fill(1.f);  // norms
  } else if (ends_with(name, "embedding") || ends_with(name, "pos_embed") || ends_with(name, "cls_token") ||
             ends_with(name, "mask_token") || name == "contexts" || ends_with(name, "token_embedding.weight")) {
    normal(0.5);
  } else if (ends_with(name, ".proj") || ends_with(name, "text_projection")) {
    normal(1.0 / std::sqrt(double(shape[0])));  // used as x @ p: rows are the fan-in
  } else if (name.find("conv_transpose") != std::string::npos || name.find(".fpn") != std::string::npos) {
    normal(1.0 / std::sqrt(double(shape[0])));  // ConvTranspose2d [in, out, k, k]
  } else {
    normal(1.0 / std::sqrt(double(shape[0] ? n / shape[0] : 1)));  // [out, fan_in...]
  }
  synthesized_.emplace_back(name, t);
  return t;
}

std::optional<std::vector<int64_t>> WeightStore::shape_of(const std::string& name) {
  MFUSER_CHECK(reader_, "WeightStore: sizes cannot be read from synthesized weights ('", name, "')");
  const SafetensorsEntry* e = reader_->find(name);
  if (!e) {
    problems_.push_back(str_cat("missing tensor '", name, "'"));
    return std::nullopt;
  }
  return e->shape;
}

Tensor WeightStore::get(const std::string& name, const Shape& expected) {
  used_.insert(name);
  if (!reader_) return make_up(name, DType::f32, expected);
  const SafetensorsEntry* e = reader_->find(name);
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
    // f32 tensors stay zero-copy views of the mapped file (unless set_owned asks for a copy); other float types
    // are converted once.
    return e->dtype == "F32" && !(owned_ && owned_(name)) ? reader_->view(name) : reader_->load(name, DType::f32);
  } catch (const SafetensorsError& err) {
    problems_.push_back(err.what());
    return Tensor::zeros(expected, DType::f32);
  }
}

Tensor WeightStore::get_raw(const std::string& name, DType expected_dtype, const Shape& expected) {
  used_.insert(name);
  if (!reader_) return make_up(name, expected_dtype, expected);
  const SafetensorsEntry* e = reader_->find(name);
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
  return reader_->load(name);
}

void WeightStore::ignore(const std::string& name, const Shape& shape, DType dtype) {
  used_.insert(name);
  if (!reader_) make_up(name, dtype, shape);
}

void WeightStore::finish() const {
  if (!reader_) return;
  std::vector<std::string> all = problems_;
  for (const SafetensorsEntry& e : reader_->entries())
    if (!used_.contains(e.name)) all.push_back(str_cat("unexpected tensor '", e.name, "'"));
  if (all.empty()) return;
  std::ostringstream os;
  os << path_ << ": " << all.size() << " problem(s) with the weights:";
  constexpr size_t kShown = 40;
  for (size_t i = 0; i < all.size() && i < kShown; ++i) os << "\n  " << all[i];
  if (all.size() > kShown) os << "\n  ... and " << all.size() - kShown << " more";
  throw Error(os.str());
}

}  // namespace mfuser::model
