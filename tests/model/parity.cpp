#include "tests/model/parity.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <vector>

#include "graph/model/mfuser.h"
#include "kernels/layout/layout.h"

namespace mfuser::test {

GoldenModel load_golden_model(const std::string& name) {
  const char* root = std::getenv("MFUSER_GOLDEN_DIR");
  MFUSER_CHECK(root, "MFUSER_GOLDEN_DIR is not set: run this test through ctest, which generates the golden data");
  GoldenModel g;
  g.dir = str_cat(root, "/model_", name);
  const Config manifest = Config::load(g.dir + "/manifest.json");
  g.config = model::ModelConfig::from(manifest.section("config"));
  g.seed = std::to_string(manifest.get<int64_t>("seed"));
  g.golden = std::make_unique<SafetensorsReader>(g.dir + "/golden.safetensors");
  g.inputs = std::make_unique<SafetensorsReader>(g.dir + "/input.safetensors");
  return g;
}

ErrorStats compare_to_golden(const GoldenModel& g, const std::string& golden_name, const Tensor& ours,
                             const std::vector<int>& golden_perm) {
  Tensor ref = g.golden->view(golden_name);
  if (ref.ndim() == ours.ndim() + 1) {
    // A module called once per layer (the pixel decoder's post-norm) is recorded stacked; ours is the last call.
    const Shape stacked = ref.shape();
    ref = ref.slice_rows(stacked[0] - 1, stacked[0]).reshape(Shape(stacked.dims().subspan(1)));
  }
  if (!golden_perm.empty()) {
    Shape permuted = ref.shape();
    for (size_t i = 0; i < golden_perm.size(); ++i) permuted[int(i)] = ref.shape()[golden_perm[i]];
    Tensor out = Tensor::empty(permuted, ref.dtype());
    kernels::permute(ref, out, golden_perm);
    ref = out;
  }
  const Tensor host = ours.device().is_cpu() ? ours : ours.to(Device::cpu());
  EXPECT_EQ(host.shape(), ref.shape()) << golden_name;
  if (!(host.shape() == ref.shape())) return {1e30, 1e30, 0};
  return compare(host, ref);
}

void expect_matches_golden(const GoldenModel& g, const graph::Executor& ex, const std::string& our_name,
                           const std::string& golden_name, double tol, const std::vector<int>& golden_perm) {
  const ErrorStats e = compare_to_golden(g, golden_name, ex.get(our_name), golden_perm);
  std::printf("  %-56s %s\n", golden_name.c_str(), describe(e).c_str());
  EXPECT_LE(e.rel_l2, tol) << golden_name << " (ours: " << our_name << "): " << describe(e) << ", golden seed " << g.seed;
  EXPECT_EQ(e.nonfinite, 0) << golden_name;
}

namespace {

// The oracle records some sequences sequence-first ([L, B, C], nn.MultiheadAttention's layout); ours are
// batch-first.
std::vector<int> golden_layout(const GoldenModel& g, const std::string& name, const Shape& ours) {
  auto shape = g.golden->entry(name).shape;
  if (int(shape.size()) == ours.ndim() + 1) shape.erase(shape.begin());  // stacked per-call outputs
  if (shape.size() == 3 && ours.ndim() == 3 && shape[0] == ours[1] && shape[1] == ours[0] && shape[0] != shape[1])
    return {1, 0, 2};
  return {};
}

}  // namespace

ArgmaxAgreement argmax_agreement(const Tensor& ours, const Tensor& ref, double tie_margin) {
  const int64_t batch = ref.dim(0), classes = ref.dim(1), pixels = ref.dim(2) * ref.dim(3);
  const float* a = ours.data<float>();
  const float* r = ref.data<float>();
  int64_t agree = 0;
  ArgmaxAgreement result;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t p = 0; p < pixels; ++p) {
      const auto at = [&](const float* t, int64_t c) { return t[(b * classes + c) * pixels + p]; };
      int64_t best_a = 0, best_r = 0;
      for (int64_t c = 1; c < classes; ++c) {
        if (at(a, c) > at(a, best_a)) best_a = c;
        if (at(r, c) > at(r, best_r)) best_r = c;
      }
      if (best_a == best_r) {
        ++agree;
        continue;
      }
      float second = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < classes; ++c)
        if (c != best_r) second = std::max(second, at(r, c));
      result.clear_disagreements += at(r, best_r) - second > tie_margin;
    }
  result.share = double(agree) / double(batch * pixels);
  return result;
}

void check_whole_model(const GoldenModel& g, double module_tol, double logits_tol, double min_agreement) {
  SCOPED_TRACE("golden seed " + g.seed);
  model::MfuserModel model(g.weights_path(), g.config);
  const ErrorStats text = compare_to_golden(g, "text_encoder", model.text_features());
  std::printf("  %-56s %s\n", "text_encoder", describe(text).c_str());
  if (module_tol >= 0) {
    EXPECT_LE(text.rel_l2, module_tol);
  }

  const Tensor image = g.inputs->view("img");
  auto graph = model.build(image.dim(0), image.dim(2), image.dim(3));
  std::vector<std::string> compared;
  for (const SafetensorsEntry& e : g.golden->entries()) {
    const graph::ValueId id = graph->find(e.name);
    if (id != graph::kNoValue && graph->value(id).kind == graph::ValueKind::intermediate && e.name != "logits") {
      graph->mark_output(id);
      compared.push_back(e.name);
    }
  }
  graph::Executor executor(*graph, Device::cpu());
  executor.set_input("image", image);
  executor.run();
  for (const std::string& name : compared) {
    const std::vector<int> perm = golden_layout(g, name, graph->value(graph->at(name)).shape);
    if (module_tol >= 0) {
      expect_matches_golden(g, executor, name, name, module_tol, perm);
    } else {
      const ErrorStats e = compare_to_golden(g, name, executor.get(name), perm);
      std::printf("  %-56s %s\n", name.c_str(), describe(e).c_str());
    }
  }
  EXPECT_GE(compared.size(), 60u) << "too few modules compared: names drifted from the oracle's?";
  expect_matches_golden(g, executor, "logits", "logits", logits_tol);

  const double agreement = argmax_agreement(executor.get("logits"), g.golden->view("logits")).share;
  std::printf("  argmax agreement: %.6f%% of pixels\n", 100 * agreement);
  EXPECT_GE(agreement, min_agreement);
}

void feed_point_draws(const GoldenModel& g, const model::TrainingGraph& t, int64_t batch,
                      graph::Executor& ex) {
  int64_t draw = 0;
  const auto next = [&] { return g.golden->load(str_cat("points.", draw++)); };
  for (int i = 0; i < t.predictions; ++i) {
    for (int64_t b = 0; b < batch; ++b) next();
    for (const char* kind : {"candidates", "randoms"}) {
      const std::string name = str_cat("points.", kind, ".", i);
      const Shape shape = t.graph->value(t.graph->at(name)).shape;
      Tensor buffer = Tensor::zeros(shape, DType::f32);
      if (g.golden->find(str_cat("points.", draw)) && g.golden->view(str_cat("points.", draw)).dim(1) == shape[1]) {
        const Tensor d = next();
        buffer.slice_rows(0, d.dim(0)).copy_from(d);
      }
      ex.set_input(name, buffer);
    }
  }
}

namespace {

// (module output name, its gradient in t) for every "output_grad.<name>" of the golden our graph has too, but
// the pixel decoder's per-level memories: ours feeds the transformer decoder from another split of the encoder
// output (tokens, not maps), so the maps' gradients hold only the FPN's share; the whole is compared at their
// source, decode_head.pixel_decoder.encoder.
std::vector<std::pair<std::string, graph::ValueId>> activation_gradients(const GoldenModel& g,
                                                                        const model::TrainingGraph& t) {
  std::vector<std::pair<std::string, graph::ValueId>> found;
  for (const SafetensorsEntry& e : g.golden->entries()) {
    if (!e.name.starts_with("output_grad.")) continue;
    const std::string name = e.name.substr(std::string_view("output_grad.").size());
    if (name.starts_with("decode_head.pixel_decoder.memory.")) continue;
    const graph::ValueId id = t.graph->find(name);
    const auto grad = id == graph::kNoValue ? t.gradients.of.end() : t.gradients.of.find(id);
    if (grad != t.gradients.of.end()) found.emplace_back(name, grad->second);
  }
  return found;
}

}  // namespace

std::unique_ptr<TrainingStepRun> run_training_step_checking_losses(
    const GoldenModel& g, DType storage, Device device, const std::function<double(const std::string& loss)>& loss_tol) {
  auto run = std::make_unique<TrainingStepRun>();
  run->weights = std::make_unique<model::WeightStore>(g.weights_path());
  const Tensor image = g.inputs->load("img");
  const int64_t batch = image.dim(0), h = image.dim(2), w = image.dim(3);
  run->graph = model::build_training_graph(*run->weights, g.config, batch, h, w, {.storage = storage, .dropout = false});
  run->activation_gradients = activation_gradients(g, run->graph);
  for (const auto& [name, grad] : run->activation_gradients) run->graph.graph->mark_output(grad);
  run->executor = std::make_unique<graph::Executor>(*run->graph.graph, device);
  graph::Executor& ex = *run->executor;
  ex.set_input("image", image);
  ex.set_input("gt_semantic_seg", g.inputs->load("gt_semantic_seg").reshape({batch, h, w}));
  feed_point_draws(g, run->graph, batch, ex);
  ex.run();
  const auto expect_loss = [&](const std::string& name, const Tensor& ours_any) {
    const Tensor ref = g.golden->view("loss." + name), ours = ours_any.to(Device::cpu());
    ASSERT_EQ(ref.numel(), 1) << name;
    const ErrorStats e = compare(ours, ref);
    std::printf("[ loss     ] %-28s %12.6g  rel %.2e\n", name.c_str(), value_at(ours, 0), e.rel_l2);
    EXPECT_LE(e.rel_l2, loss_tol ? loss_tol(name) : 1e-5) << name;
  };
  for (const auto& [name, value] : run->graph.losses) expect_loss(name, ex.get(run->graph.graph->value(value).name));
  expect_loss("total", ex.get("loss.total"));
  return run;
}

void expect_step_within_oracle_noise(const GoldenModel& g, Device device, DType storage,
                                     const OracleNoiseBounds& bounds) {
  const std::string precision = storage == DType::bf16 ? "bf16" : "fp32";
  const nlohmann::json manifest = Config::load(g.dir + "/manifest.json").json();
  const nlohmann::json& grad_noise = manifest.at("oracle_" + precision + "_grad_rel_error");
  const nlohmann::json* loss_noise = manifest.contains("oracle_" + precision + "_loss_rel_error")
                                         ? &manifest.at("oracle_" + precision + "_loss_rel_error")
                                         : nullptr;
  const auto run = run_training_step_checking_losses(g, storage, device, [&](const std::string& loss) {
    return std::max(bounds.loss_floor, loss_noise ? bounds.loss_factor * loss_noise->at(loss).get<double>() : 0.0);
  });
  struct Part {
    double ours2 = 0, theirs2 = 0, ref2 = 0;  // squared L2 norms of our error, PyTorch's error, the gradients
  };
  std::map<std::string, Part> parts;
  compare_gradients(g, run->graph, *run->executor, 1e-6, bounds.zero_gradient_noise,
                    [&](const std::string& param, const ErrorStats& err) {
    ASSERT_TRUE(grad_noise.contains(param)) << param << ": the oracle recorded no " << precision << " error for it";
    const double noise = grad_noise[param].get<double>();
    EXPECT_LE(err.rel_l2, std::max(bounds.param_floor, bounds.param_factor * noise))
        << param << ": " << describe(err) << " (PyTorch's own " << precision << " error " << noise << ")";
    Part& part = parts[param.substr(0, param.find('.', param.find('.') + 1))];
    part.ours2 += err.diff_l2 * err.diff_l2;
    part.theirs2 += std::pow(noise * err.ref_l2, 2);
    part.ref2 += err.ref_l2 * err.ref_l2;
  });
  std::vector<double> ratios;
  for (const auto& [name, part] : parts) {
    const double ours = std::sqrt(part.ours2 / part.ref2), theirs = std::sqrt(part.theirs2 / part.ref2);
    ratios.push_back(ours / theirs);
    std::printf("[ %-8s ] %-32s rel %.3g, PyTorch's own %.3g (%.2fx)\n", precision.c_str(), name.c_str(), ours,
                theirs, ratios.back());
    EXPECT_LE(ours, std::max(bounds.part_floor, bounds.part_factor * theirs))
        << name << ": PyTorch's own " << precision << " error " << theirs;
  }
  // d loss / d every module output both sides name alike (graph values are named after the oracle's modules).
  const nlohmann::json& activation_noise = manifest.at("oracle_" + precision + "_activation_grad_rel_error");
  int activations = 0;
  for (const auto& [name, grad] : run->activation_gradients) {
    ASSERT_TRUE(activation_noise.contains(name)) << name << ": the oracle recorded no " << precision << " error";
    const Tensor ours = run->executor->get(run->graph.graph->value(grad).name);
    const std::string golden_name = "output_grad." + name;
    const ErrorStats err = compare_to_golden(g, golden_name, ours, golden_layout(g, golden_name, ours.shape()));
    const double theirs = activation_noise[name].get<double>();
    ++activations;
    std::printf("[ %-8s ] d loss / d %-42s rel %.3g, PyTorch's own %.3g (%.2fx)\n", precision.c_str(),
                name.c_str(), err.rel_l2, theirs, err.rel_l2 / theirs);
    EXPECT_LE(err.rel_l2, std::max(bounds.part_floor, bounds.part_factor * theirs))
        << "d loss / d " << name << ": " << describe(err) << " (PyTorch's own " << precision << " error " << theirs
        << ")";
  }
  EXPECT_GE(activations, 40) << "module outputs whose gradient was compared";
  ASSERT_FALSE(ratios.empty());
  std::nth_element(ratios.begin(), ratios.begin() + ratios.size() / 2, ratios.end());
  std::printf("[ %-8s ] median over %zu parts: %.2fx PyTorch's own error\n", precision.c_str(), ratios.size(),
              ratios[ratios.size() / 2]);
  EXPECT_LE(ratios[ratios.size() / 2], bounds.median_factor) << "our step is noisier than PyTorch's across the model";
}

void compare_gradients(const GoldenModel& g, const model::TrainingGraph& t, const graph::Executor& ex,
                       double zero_bound, double our_zero_noise,
                       const std::function<void(const std::string& param, const ErrorStats& err)>& check) {
  int compared = 0;
  for (const SafetensorsEntry& e : g.golden->entries()) {
    if (!e.name.starts_with("grad.")) continue;
    const std::string param = e.name.substr(5);
    if (t.graph->find(e.name) == graph::kNoValue) {
      EXPECT_EQ(compare(g.golden->view(e.name), Tensor::zeros(Shape(std::span(e.shape)), DType::f32)).max_abs, 0.0)
          << param << " has a gradient in the oracle but none here";
      continue;
    }
    const Tensor ref = g.golden->view(e.name);
    const ErrorStats err = compare(ex.get(e.name), ref);
    ++compared;
    if (compare(ref, Tensor::zeros(ref.shape(), DType::f32)).max_abs < zero_bound) {
      EXPECT_LE(err.max_abs, our_zero_noise) << param << " (zero gradient): " << describe(err);
      continue;
    }
    check(param, err);
  }
  for (const graph::ValueId p : t.parameters)
    EXPECT_TRUE(g.golden->contains("grad." + t.graph->value(p).name))
        << t.graph->value(p).name << " is trained here but not in the oracle";
  EXPECT_EQ(compared, int(t.parameters.size()));
}

}  // namespace mfuser::test
