// The Trainer and the training loop of `mfuser train` (apps/trainer.h) on the tiny config, 64x64 crops, batch 2,
// with an in-test data source: the loss goes down, a run resumed from a checkpoint reaches bitwise the
// parameters of an uninterrupted one, a non-finite loss stops the run with a clear error and keeps the last
// checkpoint, the checkpoint loads as a model, and bad training configs are refused naming the key.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "apps/trainer.h"
#include "graph/model/mfuser.h"
#include "loaders/config.h"
#include "loaders/safetensors.h"
#include "tests/common/test_util.h"

namespace mfuser {
namespace {

namespace fs = std::filesystem;
using apps::TrainBatch;
using apps::TrainConfig;

constexpr int64_t kBatch = 2, kCrop = 64;

// `distinct` fixed batches, cycled: two classes per image, left and right of a random split, each class a
// colour (plus noise), a few ignored (255) rows. Batch k depends only on (seed, k % distinct). From batch
// `poison_from` on, the images are NaN.
class TestData : public apps::TrainData {
 public:
  explicit TestData(uint64_t seed, int distinct = 4, int64_t poison_from = -1)
      : seed_(seed), distinct_(distinct), poison_from_(poison_from) {}
  TrainBatch next() override {
    const int64_t index = next_++;
    TrainBatch b;
    b.step = index;
    std::mt19937_64 rng(seed_ * 1000003 + uint64_t(index % distinct_));
    std::normal_distribution<float> noise(0.f, 0.2f);
    b.images = Tensor::empty({kBatch, 3, kCrop, kCrop}, DType::f32);
    b.labels = Tensor::empty({kBatch, kCrop, kCrop}, DType::i64);
    float* img = b.images.data<float>();
    int64_t* lab = b.labels.data<int64_t>();
    for (int64_t n = 0; n < kBatch; ++n) {
      const auto c1 = int64_t(rng() % 19), c2 = int64_t(rng() % 19), split = 8 + int64_t(rng() % 48);
      for (int64_t y = 0; y < kCrop; ++y)
        for (int64_t x = 0; x < kCrop; ++x) {
          const int64_t c = x < split ? c1 : c2;
          lab[(n * kCrop + y) * kCrop + x] = y < 2 ? 255 : c;
          for (int64_t ch = 0; ch < 3; ++ch)
            img[((n * 3 + ch) * kCrop + y) * kCrop + x] =
                index >= poison_from_ && poison_from_ >= 0 ? std::numeric_limits<float>::quiet_NaN()
                                                           : std::sin(float(c) * 1.7f + float(ch) * 2.1f) + noise(rng);
        }
    }
    return b;
  }
  int64_t size() const override { return distinct_ * kBatch; }
  int64_t step() const override { return next_; }
  void skip_to(int64_t step) override { next_ = step; }
  double total_wait_seconds() const override { return 0; }

 private:
  uint64_t seed_;
  int distinct_;
  int64_t poison_from_, next_ = 0;
};

// The tiny model with synthesized weights as a checkpoint folder (what `mfuser init` writes), made once and
// removed at exit with everything the tests wrote beside it.
struct Fixture {
  fs::path dir, weights, config;
  model::ModelConfig model_config;

  Fixture() {
    const char* src = std::getenv("MFUSER_SOURCE_DIR");
    const fs::path root = src ? fs::path(src) : fs::path(__FILE__).parent_path().parent_path().parent_path();
    dir = fs::temp_directory_path() / str_cat("mfuser_trainer_test_", ::getpid());
    fs::remove_all(dir);
    fs::create_directories(dir / "model");
    weights = dir / "model/model.safetensors";
    config = dir / "model/config.json";
    fs::copy_file(root / "tools/configs/mfuser_clip_tiny.json", config);
    model_config = model::ModelConfig::load(config.string());
    const model::MfuserModel m(model::WeightStore::synthesize(7), model_config);
    write_safetensors(weights.string(), m.weights().synthesized());
  }
  ~Fixture() {
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }
  Fixture(const Fixture&) = delete;
  Fixture& operator=(const Fixture&) = delete;
};

const Fixture& tiny() {
  static const Fixture f;
  return f;
}

TrainConfig small_config(int64_t iterations) {
  TrainConfig c;
  c.batch = kBatch;
  c.crop = kCrop;
  c.iterations = iterations;
  c.warmup = 0;
  c.lr = 1e-3;
  c.min_lr = 1e-6;
  c.save_every = 0;
  c.log_every = 1;
  c.seed = 3;
  return c;
}

apps::TrainRunOptions run_options(const TrainConfig& c, const fs::path& out) {
  apps::TrainRunOptions o;
  o.weights = tiny().weights.string();
  o.model_config = tiny().model_config;
  o.model_config_path = tiny().config.string();
  o.config = c;
  o.out_dir = out.string();
  o.on_message = [](const std::string& m) { std::printf("[ message  ] %s\n", m.c_str()); };
  return o;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

TEST(Trainer, LossDecreases) {
  TrainConfig c = small_config(30);
  c.log_every = 10;
  TestData data(1);
  std::vector<double> losses;
  double seconds = 0;
  apps::TrainRunOptions o = run_options(c, tiny().dir / "decrease");
  o.on_step = [&](const apps::StepStats& s) {
    losses.push_back(s.total);
    if (s.step > 1) seconds += s.seconds;
  };
  o.on_log = [](const apps::TrainLogLine& l) { std::printf("[ log      ] %s\n", l.text.c_str()); };
  const std::string last = apps::run_training(o, data);
  ASSERT_EQ(losses.size(), 30u);
  const auto mean = [&](size_t begin, size_t end) {
    double s = 0;
    for (size_t i = begin; i < end; ++i) s += losses[i];
    return s / double(end - begin);
  };
  const double first = mean(0, 4), final = mean(26, 30);  // a cycle of the 4 distinct batches each
  std::printf("[ measured ] loss first 4 steps %.4f, last 4 steps %.4f; %.3f s per step (batch %lld, %lldx%lld)\n",
              first, final, seconds / 29, static_cast<long long>(kBatch), static_cast<long long>(kCrop),
              static_cast<long long>(kCrop));
  EXPECT_LT(final, 0.9 * first);  // measured: 54.4 -> 43 (the first ~10 steps do most of it)
  EXPECT_EQ(last, (tiny().dir / "decrease/iter_30").string());
  // The log: one JSON line per log_every steps.
  std::ifstream log(tiny().dir / "decrease/train_log.jsonl");
  int lines = 0;
  for (std::string line; std::getline(log, line); ++lines) {
    const nlohmann::json rec = nlohmann::json::parse(line);
    EXPECT_EQ(rec.at("step").get<int64_t>(), 10 * (lines + 1));
    EXPECT_TRUE(rec.at("losses").contains("decode.loss_mask"));
    for (const char* key : {"loss", "lr", "grad_norm", "step_ms", "images_per_s", "data_wait_ms", "memory_bytes"})
      EXPECT_TRUE(rec.contains(key)) << key;
  }
  EXPECT_EQ(lines, 3);
  // The checkpoint is a complete model: it builds (WeightStore::finish checks every tensor) and runs.
  model::MfuserModel m(last + "/model.safetensors", model::ModelConfig::load(last + "/config.json"));
  EXPECT_NE(m.build(1, kCrop, kCrop), nullptr);
}

TEST(Trainer, ResumeIsBitwiseExact) {
  const TrainConfig c = [] {
    TrainConfig c = small_config(6);
    c.save_every = 3;
    c.log_every = 2;
    return c;
  }();
  const fs::path whole = tiny().dir / "whole", cut = tiny().dir / "cut";
  {
    TestData data(2);
    apps::run_training(run_options(c, whole), data);
  }
  {
    // Interrupted in step 4, after the checkpoint of step 3.
    TestData data(2);
    apps::TrainRunOptions o = run_options(c, cut);
    o.on_step = [](const apps::StepStats& s) {
      if (s.step == 4) throw std::runtime_error("interrupted");
    };
    EXPECT_THROW(apps::run_training(o, data), std::runtime_error);
    ASSERT_TRUE(fs::exists(cut / "iter_3/model.safetensors"));
    ASSERT_FALSE(fs::exists(cut / "iter_4"));
  }
  {
    TestData data(2);  // a fresh stream: the resume moves it to step 3 (skip_to)
    apps::TrainRunOptions o = run_options(c, cut);
    o.resume = cut.string();
    o.weights = "/nonexistent";  // resuming takes the weights from the checkpoint
    int steps = 0;
    o.on_step = [&](const apps::StepStats& s) {
      EXPECT_EQ(s.step, 4 + steps);
      ++steps;
    };
    EXPECT_EQ(apps::run_training(o, data), (cut / "iter_6").string());
    EXPECT_EQ(steps, 3);
  }
  const SafetensorsReader initial(tiny().weights.string());
  for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
    const SafetensorsReader a((whole / "iter_6" / file).string()), b((cut / "iter_6" / file).string());
    ASSERT_EQ(a.entries().size(), b.entries().size()) << file;
    EXPECT_EQ(a.metadata().at("step"), "6");
    int changed = 0;
    for (const SafetensorsEntry& e : a.entries()) {
      ASSERT_TRUE(b.contains(e.name)) << file << ": " << e.name;
      EXPECT_TRUE(bitwise_equal(a.view(e.name), b.view(e.name))) << file << ": " << e.name;
      if (std::string(file) == "model.safetensors") {
        const bool same = bitwise_equal(a.view(e.name), initial.view(e.name));
        // Frozen tensors stay exactly as given; trainable ones moved.
        if (!model::is_trainable(e.name) && !e.name.ends_with("running_mean") && !e.name.ends_with("running_var")) {
          EXPECT_TRUE(same) << e.name;
        }
        changed += !same;
      }
    }
    if (std::string(file) == "model.safetensors") {
      EXPECT_GT(changed, 50);
    }
  }
}

TEST(Trainer, NonFiniteLossStopsAndKeepsTheLastCheckpoint) {
  TrainConfig c = small_config(6);
  c.save_every = 2;
  TestData data(4, 4, /*poison_from=*/2);  // batch 2 (the third step) is NaN
  const fs::path out = tiny().dir / "nan";
  try {
    apps::run_training(run_options(c, out), data);
    FAIL() << "no error";
  } catch (const apps::TrainingDiverged& e) {
    const std::string what = e.what();
    std::printf("[ error    ] %s\n", what.c_str());
    EXPECT_NE(what.find("step 3: the loss is not finite"), std::string::npos) << what;
    EXPECT_NE(what.find((out / "iter_2").string()), std::string::npos) << what;
  }
  EXPECT_EQ(apps::resolve_checkpoint(out.string()), (out / "iter_2").string());
  const SafetensorsReader kept((out / "iter_2/model.safetensors").string());
  EXPECT_EQ(kept.metadata().at("step"), "2");
  EXPECT_FALSE(fs::exists(out / "iter_3"));
}

TEST(Trainer, PoisonedWeightStopsBeforeUpdating) {
  apps::Trainer t(tiny().weights.string(), tiny().model_config, small_config(3), Device::cpu());
  const std::string poisoned = t.parameter_names()[t.parameter_names().size() / 2];
  Tensor w = t.weight(poisoned);
  std::fill(w.data<float>(), w.data<float>() + w.numel(), std::numeric_limits<float>::quiet_NaN());
  const std::string other = t.parameter_names().front();
  const Tensor before = t.weight(other).to(Device::cpu());
  TestData data(5);
  try {
    t.step(data.next());
    FAIL() << "no error";
  } catch (const apps::TrainingDiverged& e) {
    std::printf("[ error    ] %s\n", e.what());
    EXPECT_NE(std::string(e.what()).find("step 1:"), std::string::npos) << e.what();
  }
  EXPECT_EQ(t.steps_done(), 0);
  EXPECT_TRUE(bitwise_equal(before, t.weight(other)));
}

TEST(TrainConfig, DefaultsAreTheOfficialValues) {
  const TrainConfig c = TrainConfig::parse("{}");
  EXPECT_EQ(c.lr, 1e-4);
  EXPECT_EQ(c.weight_decay, 1e-4);
  EXPECT_EQ(c.beta1, 0.9);
  EXPECT_EQ(c.beta2, 0.999);
  EXPECT_EQ(c.eps, 1e-8);
  EXPECT_EQ(c.iterations, 20000);
  EXPECT_EQ(c.warmup, 1500);
  EXPECT_EQ(c.warmup_ratio, 1e-6);
  EXPECT_EQ(c.power, 0.9);
  EXPECT_EQ(c.min_lr, 1e-6);
  EXPECT_EQ(c.batch, 2);
  EXPECT_EQ(c.crop, 512);
  EXPECT_EQ(c.save_every, 2000);
  EXPECT_EQ(c.log_every, 10);
  EXPECT_EQ(c.seed, 0u);
  EXPECT_EQ(c.dataset, "synthetic");
  EXPECT_FALSE(c.recompute);
  EXPECT_TRUE(c.dropout);
  // Round trip, non-default values included.
  TrainConfig d = small_config(17);
  d.beta2 = 0.95;
  d.dataset = "gta";
  d.root = "/data/gta";
  d.recompute = true;
  d.dropout = false;
  const TrainConfig e = TrainConfig::parse(d.to_json());
  EXPECT_EQ(e.to_json(), d.to_json());
  EXPECT_EQ(e.beta2, 0.95);
  EXPECT_EQ(e.iterations, 17);
  EXPECT_TRUE(e.recompute);
  EXPECT_FALSE(e.dropout);
}

TEST(TrainConfig, BadValuesNameTheKey) {
  const auto error_of = [](const std::string& text) -> std::string {
    try {
      TrainConfig::parse(text, "train.json");
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "no error";
  };
  const std::pair<const char*, const char*> cases[] = {
      {R"({"lr": -1})", "train.json: key 'lr' must be a finite number > 0"},
      {R"({"lr": "1e-4"})", "train.json: key 'lr' must be a number"},
      {R"({"batch": 1.5})", "train.json: key 'batch' must be an integer"},
      {R"({"batch": 0})", "train.json: key 'batch' must be an integer >= 1"},
      {R"({"betas": [0.9]})", "train.json: key 'betas' must be an array of two numbers"},
      {R"({"betas": [0.9, 1.0]})", "train.json: key 'betas' must be two numbers in [0, 1)"},
      {R"({"warmup_ratio": 0})", "train.json: key 'warmup_ratio' must be a number in (0, 1]"},
      {R"({"min_lr": 1})", "train.json: key 'min_lr' must be a number in [0, lr]"},
      {R"({"seed": -2})", "train.json: key 'seed' must be an integer >= 0"},
      {R"({"iterations": 0})", "train.json: key 'iterations' must be an integer >= 1"},
      {R"({"save_every": -1})", "train.json: key 'save_every' must be an integer >= 0"},
      {R"({"log_every": 0})", "train.json: key 'log_every' must be an integer >= 1"},
      {R"({"dataset": 3})", "train.json: key 'dataset' must be a string"},
      {R"({"recompute": 1})", "train.json: key 'recompute' must be true or false"},
      {R"({"learning_rate": 1})", "train.json: unknown key 'learning_rate'"},
      {R"({"lr": 1)", "train.json: invalid JSON"},
      {R"([1])", "train.json: the training config must be a JSON object"},
  };
  for (const auto& [text, expected] : cases) {
    const std::string what = error_of(text);
    EXPECT_NE(what.find(expected), std::string::npos) << text << " -> " << what;
  }
  const fs::path missing = tiny().dir / "missing.json";
  EXPECT_THROW(TrainConfig::load(missing.string()), ConfigError);
}

}  // namespace
}  // namespace mfuser
