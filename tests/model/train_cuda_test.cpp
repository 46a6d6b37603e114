// One training step of the tiny config on CUDA against the same step on the CPU reference: the same weights (the
// tiny golden model's), image, labels and point draws; every loss and every trainable parameter's gradient
// ("grad.<name>") compared, fp32 within 1e-3 relative L2. Dropout and DropPath are on: both devices draw the
// same masks from the step's seed. The CUDA step also runs eagerly, captured as a CUDA
// graph and replayed: the losses and chosen points bitwise equal (the forward is deterministic, nothing breaks
// a capture); the gradients equal to rounding only, as msdeform_attn's backward sums grad_value with atomics
// (its header), which reorders the sums of everything upstream of the pixel decoder run to run.
//
// Choosing points by |mask logit| is discontinuous: CUDA and CPU logits differ by ~1e-6, so where two
// candidates tie that closely the two runs keep different points, and one swapped point moves the gradients
// upstream of the masks by ~1e-4..1e-3 (train_parity_test.cpp measured it against float64). The strict
// comparison therefore samples random points only (importance_sample_ratio 0, as the parity golden does); the
// official 0.75 is checked on its own: losses within 1e-3, the chosen point sets (nearly) the same.
// bf16 storage (TinyStepBf16WithinPyTorchsOwnBf16Error): the oracle's golden step, within PyTorch's own bf16 error.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "graph/executor.h"
#include "graph/model/training.h"
#include "tests/common/cuda_test.h"
#include "tests/model/parity.h"

namespace mfuser {
namespace {

using Results = std::map<std::string, Tensor>;  // output name -> host copy

// One step's inputs: a normal image; labels in 8x8-pixel cells of 6 classes per image, 10% of the cells
// ignored (255); uniform [0, 1) point draws for every decode-head prediction.
std::map<std::string, Tensor> random_inputs(const model::TrainingGraph& t, int64_t batch, int64_t size,
                                            int64_t classes) {
  std::map<std::string, Tensor> in;
  Tensor image = Tensor::empty({batch, 3, size, size}, DType::f32);
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < image.numel(); ++i) image.data<float>()[i] = normal(test::rng());
  in["image"] = image;
  Tensor labels = Tensor::empty({batch, size, size}, DType::i64);
  std::vector<int64_t> order(static_cast<size_t>(classes));
  for (int64_t c = 0; c < classes; ++c) order[size_t(c)] = c;
  std::bernoulli_distribution ignored(0.1);
  std::uniform_int_distribution<int64_t> pick(0, std::min<int64_t>(6, classes) - 1);
  const int64_t cells = (size + 7) / 8;
  for (int64_t b = 0; b < batch; ++b) {
    std::shuffle(order.begin(), order.end(), test::rng());
    std::vector<int64_t> cell(size_t(cells * cells));
    for (int64_t& c : cell) c = ignored(test::rng()) ? 255 : order[size_t(pick(test::rng()))];
    for (int64_t i = 0; i < size; ++i)
      for (int64_t j = 0; j < size; ++j)
        labels.data<int64_t>()[(b * size + i) * size + j] = cell[size_t(i / 8 * cells + j / 8)];
  }
  in["gt_semantic_seg"] = labels;
  for (int i = 0; i < t.predictions; ++i)
    for (const char* kind : {"candidates", "randoms"}) {
      const std::string name = str_cat("points.", kind, ".", i);
      in[name] = test::random_host(t.graph->value(t.graph->at(name)).shape, DType::f32, 0.f, 1.f);
    }
  // Dropout stays on: CPU and CUDA draw bitwise the same masks from the same seed (kernels/dropout).
  if (t.dropout_seed != graph::kNoValue)
    in[t.graph->value(t.dropout_seed).name] =
        Tensor::from_vector(std::vector<int64_t>{int64_t(test::rng()() >> 1)}, {1});
  return in;
}

// The names compared: every loss, the total, every trainable parameter's gradient.
std::vector<std::string> compared_outputs(const model::TrainingGraph& t) {
  std::vector<std::string> names;
  for (const auto& [name, value] : t.losses) names.push_back(t.graph->value(value).name);
  names.push_back(t.graph->value(t.total_loss).name);
  for (graph::ValueId p : t.parameters) names.push_back("grad." + t.graph->value(p).name);
  return names;
}

// The chosen points of every prediction (mask_loss's second output), marked as outputs before any executor.
std::vector<std::string> mark_points(model::TrainingGraph& t) {
  std::vector<std::string> names;
  for (int i = 0; i < t.predictions; ++i) {
    names.push_back(str_cat("decode_head.loss.", i, ".1"));
    t.graph->mark_output(t.graph->at(names.back()));
  }
  return names;
}

Results run_step(graph::Executor& ex, const std::map<std::string, Tensor>& inputs,
                 const std::vector<std::string>& outputs) {
  for (const auto& [name, data] : inputs) ex.set_input(name, data);
  ex.run();
  Results r;
  for (const std::string& name : outputs) r[name] = ex.get(name).to(Device::cpu());
  return r;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// An exactly zero gradient (a bias before a batch-statistics BatchNorm) holds rounding noise only: it is compared
// by its largest difference (<= zero_tol), every other output by relative L2.
bool is_zero_gradient(const Tensor& ref) {
  return test::compare(ref, Tensor::zeros(ref.shape(), DType::f32)).max_abs < 1e-6;
}

// Every compared output of `gpu` within rel_tol of `cpu` (relative L2); the worst one printed.
void expect_close(const Results& gpu, const Results& cpu, const std::vector<std::string>& names, double rel_tol,
                  double zero_tol = 1e-6) {
  double worst = 0, worst_zero = 0;
  std::string worst_name;
  int zeros = 0;
  for (const std::string& name : names) {
    const test::ErrorStats e = test::compare(gpu.at(name), cpu.at(name));
    EXPECT_EQ(e.nonfinite, 0) << name << " (seed " << test::seed() << ")";
    if (is_zero_gradient(cpu.at(name))) {
      ++zeros;
      worst_zero = std::max(worst_zero, e.max_abs);
      EXPECT_LE(e.max_abs, zero_tol) << name << " (zero gradient): " << test::describe(e);
      continue;
    }
    if (e.rel_l2 > worst || std::isnan(e.rel_l2)) {
      worst = e.rel_l2;
      worst_name = name;
    }
    EXPECT_LE(e.rel_l2, rel_tol) << name << ": " << test::describe(e) << " (seed " << test::seed() << ")";
  }
  std::printf("[ errors   ] %zu outputs compared, worst rel %.2e (%s); %d zero gradients, worst |difference| %.2e\n",
              names.size(), worst, worst_name.c_str(), zeros, worst_zero);
}

struct Step {
  model::TrainingGraph graph;
  std::map<std::string, Tensor> inputs;
  std::vector<std::string> outputs, points;
};

Step build_step(const test::GoldenModel& g, model::WeightStore& weights, double importance_sample_ratio) {
  model::ModelConfig cfg = g.config;
  cfg.decode_head.importance_sample_ratio = importance_sample_ratio;
  const int64_t batch = 2, size = cfg.image_size;
  Step s{model::build_training_graph(weights, cfg, batch, size, size), {}, {}, {}};
  s.points = mark_points(s.graph);
  s.inputs = random_inputs(s.graph, batch, size, cfg.num_classes);
  s.outputs = compared_outputs(s.graph);
  return s;
}

TEST(TrainingGraphCuda, TinyStepMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const test::GoldenModel g = test::load_golden_model("tiny");
  model::WeightStore weights(g.weights_path());
  Step s = build_step(g, weights, 0.0);
  std::vector<std::string> read = s.outputs;
  read.insert(read.end(), s.points.begin(), s.points.end());
  graph::Executor cpu(*s.graph.graph, Device::cpu()), gpu(*s.graph.graph, Device::cuda());
  const Results ref = run_step(cpu, s.inputs, read);
  const Results eager = run_step(gpu, s.inputs, read);
  expect_close(eager, ref, s.outputs, 1e-3);
  for (const std::string& name : s.points)
    EXPECT_TRUE(bitwise_equal(eager.at(name), ref.at(name))) << name << ": random points copied differently";

  const Results captured = run_step(gpu, s.inputs, read), replayed = run_step(gpu, s.inputs, read);
  int bitwise = 0, gradients = 0;
  double worst = 0;
  for (const std::string& name : read)
    for (const auto& [run, result] : {std::pair{"captured", &captured}, std::pair{"replayed", &replayed}}) {
      const bool same = bitwise_equal(result->at(name), eager.at(name));
      if (!name.starts_with("grad.")) {
        EXPECT_TRUE(same) << name << ": the " << run << " run differs";
        continue;
      }
      ++gradients;
      bitwise += same;
      const test::ErrorStats e = test::compare(result->at(name), eager.at(name));
      if (is_zero_gradient(eager.at(name))) {
        EXPECT_LE(e.max_abs, 1e-6) << name << " (zero gradient): the " << run << " run, " << test::describe(e);
        continue;
      }
      worst = std::max(worst, e.rel_l2);
      EXPECT_LE(e.rel_l2, 1e-4) << name << ": the " << run << " run, " << test::describe(e);
    }
  std::printf("[ repeats  ] captured and replayed vs eager: %d of %d gradients bitwise equal, worst rel %.2e "
              "(zero gradients aside)\n",
              bitwise, gradients, worst);
}

// bf16 storage on CUDA against the float64 oracle, held to the bounds of the CPU's widened bf16 step
// (train_parity_test): PyTorch's own bf16 error, per loss and per model part. Not against our CPU: one bf16 ulp
// on 0.1% of the input pixels moves the adapters' gradients by 0.4 (measured on the CPU), so two correct bf16
// runs that round differently are as far apart as either is from the exact step.
TEST(TrainingGraphCuda, TinyStepBf16WithinPyTorchsOwnBf16Error) {
  MFUSER_REQUIRE_CUDA();
  const test::GoldenModel g = test::load_golden_model("tiny_train");
  SCOPED_TRACE("golden seed " + g.seed);
  test::expect_step_within_oracle_noise(g, Device::cuda(), DType::bf16, test::kBf16StepBounds);
}

// The chosen candidates of one prediction as a sorted list of (row, x, y) per row, for set comparison.
std::vector<std::array<float, 3>> point_set(const Tensor& points) {
  std::vector<std::array<float, 3>> set;
  const float* p = points.data<float>();
  for (int64_t row = 0; row < points.dim(0); ++row)
    for (int64_t k = 0; k < points.dim(1); ++k) {
      const float* q = p + (row * points.dim(1) + k) * 2;
      set.push_back({float(row), q[0], q[1]});
    }
  std::sort(set.begin(), set.end());
  return set;
}

// The official importance sampling: the losses within 1e-3, and at least 99.9% of the chosen points the same
// (near-ties of |logit| may swap a few, see the top of the file).
TEST(TrainingGraphCuda, TinyStepWithUncertaintyPointsMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const test::GoldenModel g = test::load_golden_model("tiny");
  model::WeightStore weights(g.weights_path());
  Step s = build_step(g, weights, g.config.decode_head.importance_sample_ratio);
  std::vector<std::string> losses, read = s.points;
  for (const auto& [name, value] : s.graph.losses) losses.push_back(s.graph.graph->value(value).name);
  read.insert(read.end(), losses.begin(), losses.end());
  graph::Executor cpu(*s.graph.graph, Device::cpu()), gpu(*s.graph.graph, Device::cuda());
  const Results ref = run_step(cpu, s.inputs, read), out = run_step(gpu, s.inputs, read);
  expect_close(out, ref, losses, 1e-3);
  for (const std::string& name : s.points) {
    const auto a = point_set(out.at(name)), b = point_set(ref.at(name));
    std::vector<std::array<float, 3>> common;
    std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(common));
    const double shared = double(common.size()) / double(b.size());
    std::printf("[ points   ] %s: %.5f%% of the chosen points shared\n", name.c_str(), 100 * shared);
    EXPECT_GE(shared, 0.999) << name << " (seed " << test::seed() << ")";
  }
}

}  // namespace
}  // namespace mfuser
