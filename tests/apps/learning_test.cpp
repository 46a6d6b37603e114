// The learning proof of docs/TRAINING.md, end to end through the built binary: `mfuser init` makes the tiny
// model's random weights, `mfuser train` trains it on the CPU on the synthetic data set, and `mfuser eval`
// scores it on held-out synthetic images (split val: never a training image). Label `slow`: about three
// minutes on 2 cores. The recipe here is the one the document states; change both together.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "tests/common/test_util.h"

#ifndef MFUSER_CLI_PATH
#error "MFUSER_CLI_PATH (the mfuser binary) must be defined by the build"
#endif

namespace mfuser {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The held-out mIoU the recipe must reach (measured: docs/TRAINING.md, "Learning proof").
constexpr double kMinValMiou = 80.0;

json read_json(const fs::path& p) {
  std::ifstream in(p);
  if (!in) throw Error(str_cat("cannot read ", p.string()));
  return json::parse(in);
}

// Runs `mfuser ARGS`, its output going to LOG; returns the exit code and the seconds it took.
std::pair<int, double> mfuser(const std::string& args, const fs::path& log) {
  const std::string cmd = str_cat("'", MFUSER_CLI_PATH, "' ", args, " >'", log.string(), "' 2>&1");
  std::printf("$ mfuser %s\n", args.c_str());
  std::fflush(stdout);
  const auto start = std::chrono::steady_clock::now();
  const int status = std::system(cmd.c_str());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, seconds};
}

std::string tail_of(const fs::path& log) {
  std::ifstream in(log);
  const std::string text(std::istreambuf_iterator<char>(in), {});
  return text.size() > 3000 ? text.substr(text.size() - 3000) : text;
}

TEST(LearningProof, TinyModelLearnsTheSyntheticSetOnTheCpu) {
  const char* source = std::getenv("MFUSER_SOURCE_DIR");
  ASSERT_NE(source, nullptr) << "MFUSER_SOURCE_DIR is not set: run this test through ctest";
  const fs::path dir = fs::temp_directory_path() / str_cat("mfuser_learning_test_", getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);

  // The tiny model, with 128 mask-loss points instead of the official 12544: a 64-pixel crop has 16 x 16 mask
  // cells, and the point sampling would otherwise take most of the step.
  json model = read_json(fs::path(source) / "tools/configs/mfuser_clip_tiny.json");
  model["decode_head"]["train_num_points"] = 128;
  std::ofstream(dir / "model.json") << model.dump(1) << "\n";
  // Official AdamW + poly schedule, shortened and with a higher rate; batch 8 uses the two cores better than
  // 2. No photometric distortion and no rescaling: a synthetic class is its palette colour and its texture
  // period, which hue shifts and rescaling would make ambiguous. No dropout: in 1400 steps its regularization
  // costs accuracy (measured 81.95% with it, 84.5% without), too close to the bound to keep CI stable.
  const json train = {{"crop", 64},        {"batch", 8},        {"lr", 2e-3},
                      {"warmup", 50},      {"iterations", 1400}, {"save_every", 0},
                      {"log_every", 100},  {"seed", 0},         {"photometric", false},
                      {"resize_ratio", {1.0, 1.0}}, {"dropout", false}};
  std::ofstream(dir / "train.json") << train.dump(1) << "\n";

  const auto init = mfuser(str_cat("init --config '", source, "/tools/configs/mfuser_clip_tiny.json' --out '",
                                   (dir / "init").string(), "'"),
                           dir / "init.log");
  ASSERT_EQ(init.first, 0) << tail_of(dir / "init.log");
  const auto trained = mfuser(str_cat("train --weights '", (dir / "init/model.safetensors").string(), "' --config '",
                                      (dir / "model.json").string(), "' --config-train '",
                                      (dir / "train.json").string(), "' --out '", (dir / "run").string(),
                                      "' --data-threads 1"),
                              dir / "train.log");
  ASSERT_EQ(trained.first, 0) << tail_of(dir / "train.log");
  const auto evaluated = mfuser(str_cat("eval --weights '", (dir / "run/iter_1400/model.safetensors").string(),
                                        "' --dataset synthetic --split val --limit 200 --json '",
                                        (dir / "eval.json").string(), "'"),
                                dir / "eval.log");
  ASSERT_EQ(evaluated.first, 0) << tail_of(dir / "eval.log");

  // The loss fell, and the held-out images are segmented.
  std::ifstream log(dir / "run/train_log.jsonl");
  std::vector<double> losses;
  for (std::string line; std::getline(log, line);) losses.push_back(json::parse(line).at("loss").get<double>());
  ASSERT_EQ(losses.size(), 14u);
  const json metrics = read_json(dir / "eval.json");
  const double miou = metrics.at("mIoU").get<double>();
  std::printf("loss %.2f at step 100 -> %.2f at step 1400; held-out mIoU %.2f%% (aAcc %.2f%%) on %d images;\n"
              "init %.1f s, train %.1f s, eval %.1f s\n",
              losses.front(), losses.back(), miou, metrics.at("aAcc").get<double>(),
              metrics.at("images_evaluated").get<int>(), init.second, trained.second, evaluated.second);
  EXPECT_LT(losses.back(), 0.5 * losses.front());
  EXPECT_EQ(metrics.at("images_evaluated").get<int>(), 200);
  EXPECT_GE(miou, kMinValMiou) << tail_of(dir / "eval.log");
  if (!HasFailure()) fs::remove_all(dir);  // kept for a look when it failed
}

}  // namespace
}  // namespace mfuser
