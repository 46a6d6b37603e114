// `mfuser segment` and `mfuser eval` end to end: the built binary on the tiny model's weights (fixture
// golden_model_tiny) over temporary folders holding good, corrupt and mislabelled images.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "apps/datasets.h"
#include "apps/pipeline.h"
#include "graph/model/config.h"
#include "loaders/config.h"
#include "loaders/image.h"
#include "loaders/safetensors.h"
#include "tests/common/test_util.h"

#ifndef MFUSER_CLI_PATH
#error "MFUSER_CLI_PATH (the mfuser binary) must be defined by the build"
#endif

namespace mfuser {
namespace {

namespace fs = std::filesystem;

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct CliRun {
  int code = -1;
  std::string out, err;
};

// Runs `mfuser ARGS` with stdout and stderr captured (stderr is a file, not a TTY: plain progress lines).
CliRun mfuser(const std::string& args, const fs::path& scratch) {
  const fs::path out = scratch / "stdout.txt", err = scratch / "stderr.txt";
  const std::string cmd = str_cat("'", MFUSER_CLI_PATH, "' ", args, " >'", out.string(), "' 2>'", err.string(), "'");
  const int status = std::system(cmd.c_str());
  CliRun r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_text(out);
  r.err = read_text(err);
  std::printf("$ mfuser %s\n-> exit %d\n%s%s", args.c_str(), r.code, r.out.c_str(), r.err.c_str());
  return r;
}

std::string q(const fs::path& p) { return str_cat("'", p.string(), "'"); }

// A temporary folder with the tiny model as a checkpoint folder (model.safetensors + config.json), removed at
// the end.
struct Workspace {
  fs::path dir, weights, config;
  model::ModelConfig model_config;
  Workspace() {
    const char* golden = std::getenv("MFUSER_GOLDEN_DIR");
    if (!golden) throw Error("MFUSER_GOLDEN_DIR is not set: run this test through ctest");
    dir = fs::temp_directory_path() / str_cat("mfuser_cli_test_", getpid(), "_", test::seed(), "_", counter()++);
    fs::remove_all(dir);
    fs::create_directories(dir / "model");
    const fs::path tiny = fs::path(golden) / "model_tiny";
    weights = dir / "model" / "model.safetensors";
    fs::create_symlink(tiny / "model.safetensors", weights);
    const Config manifest = Config::load((tiny / "manifest.json").string());
    config = dir / "model" / "config.json";
    std::ofstream(config) << manifest.section("config").json().dump(1) << "\n";
    model_config = model::ModelConfig::load(config.string());
  }
  ~Workspace() { fs::remove_all(dir); }
  static int& counter() {
    static int n = 0;
    return n;
  }
};

Tensor random_rgb(int64_t h, int64_t w) {
  Tensor t = Tensor::empty({h, w, 3}, DType::u8);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<uint8_t>()[i] = uint8_t(test::rng()() & 0xFF);
  return t;
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
}

// The tiny model slides 64x64 crops; at scale 96x64 a 64x96 image is not resized and takes 2 windows.
constexpr const char* kScale = "--scale 96x64";

TEST(SegmentCli, ReportsACorruptImageAndGoesOn) {
  MFUSER_SEED_TRACE();
  Workspace ws;
  const Tensor rgb = random_rgb(64, 96);
  fs::create_directories(ws.dir / "in");
  write_png((ws.dir / "in" / "good.png").string(), rgb);
  write_bytes(ws.dir / "in" / "bad.png", "\x89PNG\r\n\x1a\n this is not an image");  // sorted first
  const fs::path out = ws.dir / "out";
  const CliRun r = mfuser(str_cat("segment --weights ", q(ws.weights), " ", q(ws.dir / "in"), " --out ", q(out), " ", kScale,
                               " --save-logits"),
                       ws.dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("bad.png"), std::string::npos) << "the corrupt image is not named";
  EXPECT_NE(r.out.find("2 image(s), 1 failed"), std::string::npos);
  EXPECT_NE(r.out.find("peak RSS"), std::string::npos);
  EXPECT_FALSE(fs::exists(out / "bad_label.png"));
  for (const char* f : {"good_label.png", "good_color.png", "good_overlay.png", "good_logits.safetensors"})
    EXPECT_TRUE(fs::exists(out / f)) << f;

  // The files hold what the Segmenter computes in-process.
  apps::SegmenterOptions o;
  o.scale = {96, 64};
  apps::Segmenter seg(ws.weights.string(), ws.model_config, o);
  const apps::Segmentation expect = seg.segment(rgb, true);
  const Tensor label = read_label((out / "good_label.png").string());
  ASSERT_EQ(label.shape(), (Shape{64, 96}));
  EXPECT_EQ(std::memcmp(label.data<uint8_t>(), expect.labels.data<uint8_t>(), size_t(label.numel())), 0);
  const Tensor color = read_rgb((out / "good_color.png").string());
  const Tensor want_color = apps::colorize(expect.labels);
  EXPECT_EQ(std::memcmp(color.data<uint8_t>(), want_color.data<uint8_t>(), size_t(color.numel())), 0);
  const Tensor blend = read_rgb((out / "good_overlay.png").string());
  const Tensor want_blend = apps::overlay(rgb, want_color, 0.5);
  EXPECT_EQ(std::memcmp(blend.data<uint8_t>(), want_blend.data<uint8_t>(), size_t(blend.numel())), 0);
  const SafetensorsReader logits((out / "good_logits.safetensors").string());
  const Tensor l = logits.view("logits");
  ASSERT_EQ(l.shape(), (Shape{19, 64, 96}));
  EXPECT_EQ(std::memcmp(l.data<float>(), expect.logits.data<float>(), l.nbytes()), 0);
}

TEST(SegmentCli, FailFastStopsAtTheFirstFailure) {
  Workspace ws;
  write_bytes(ws.dir / "in" / "bad.png", "garbage");
  write_png((ws.dir / "in" / "good.png").string(), random_rgb(64, 96));
  const fs::path out = ws.dir / "out";
  const CliRun r = mfuser(
      str_cat("segment --weights ", q(ws.weights), " ", q(ws.dir / "in"), " --out ", q(out), " ", kScale, " --fail-fast"),
      ws.dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("bad.png"), std::string::npos);
  EXPECT_FALSE(fs::exists(out / "good_label.png"));  // never reached
}

TEST(SegmentCli, ClearErrorsForMissingFilesAndBf16) {
  Workspace ws;
  write_png((ws.dir / "in.png").string(), random_rgb(64, 96));
  const std::string common = str_cat(q(ws.dir / "in.png"), " --out ", q(ws.dir / "out"), " ", kScale);

  CliRun r = mfuser(str_cat("segment --weights ", q(ws.dir / "nope.safetensors"), " ", common), ws.dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("nope.safetensors' does not exist"), std::string::npos);

  fs::create_directories(ws.dir / "lonely");
  fs::create_symlink(ws.weights, ws.dir / "lonely" / "model.safetensors");
  r = mfuser(str_cat("segment --weights ", q(ws.dir / "lonely" / "model.safetensors"), " ", common), ws.dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("config.json' does not exist"), std::string::npos);

  r = mfuser(str_cat("segment --weights ", q(ws.weights), " --precision bf16 ", common), ws.dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("bf16 runs on CUDA only"), std::string::npos);

  r = mfuser(str_cat("segment --weights ", q(ws.weights), " ", common), ws.dir);  // and the good run
  EXPECT_EQ(r.code, 0);
  EXPECT_TRUE(fs::exists(ws.dir / "out" / "in_label.png"));
}

// bench on the CPU without the oracle: the table and the per-op breakdown; bf16 is refused on the CPU.
TEST(BenchCli, PrintsTheTableAndTheBreakdown) {
  Workspace ws;
  CliRun r = mfuser(str_cat("bench --weights ", q(ws.weights), " --no-oracle --runs 1 --top 3"), ws.dir);
  EXPECT_EQ(r.code, 0);
  for (const char* needle : {"ours ms", "model FLOPs per crop", "per-op time of ours", "linear"})
    EXPECT_NE(r.out.find(needle), std::string::npos) << "missing '" << needle << "'";
  r = mfuser(str_cat("bench --weights ", q(ws.weights), " --precision bf16 --no-oracle"), ws.dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("bf16 runs on CUDA only"), std::string::npos);
  // One training step of the tiny model: its table and the backward ops in the breakdown.
  r = mfuser(str_cat("bench --weights ", q(ws.weights), " --train --no-oracle --runs 1 --top 40"), ws.dir);
  EXPECT_EQ(r.code, 0);
  for (const char* needle : {"training graph:", "step ms", "linear_backward", "mask_loss_backward",
                             "planned memory of a training step"})
    EXPECT_NE(r.out.find(needle), std::string::npos) << "missing '" << needle << "'";
  // The step with activation checkpointing, planned only: both settings' memory, nothing run.
  r = mfuser(str_cat("bench --weights ", q(ws.weights), " --train --recompute --plan-only"), ws.dir);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("planned memory of a training step"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("training graph:"), std::string::npos) << r.out;
  r = mfuser(str_cat("bench --weights ", q(ws.weights), " --recompute"), ws.dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--recompute and --plan-only go with --train"), std::string::npos) << r.err;
}

// The same image through `segment` on CUDA (fp32) gives the CPU's labels on all but a handful of pixels
// (float sums in another order can flip near-ties), and bf16 runs end to end.
TEST(SegmentCliCuda, CudaLabelsMatchTheCpu) {
  MFUSER_REQUIRE_CUDA();
  Workspace ws;
  write_png((ws.dir / "in.png").string(), random_rgb(64, 96));
  const std::string common = str_cat(q(ws.dir / "in.png"), " ", kScale, " --weights ", q(ws.weights));
  ASSERT_EQ(mfuser(str_cat("segment ", common, " --out ", q(ws.dir / "cpu")), ws.dir).code, 0);
  ASSERT_EQ(mfuser(str_cat("segment ", common, " --device cuda --out ", q(ws.dir / "cuda")), ws.dir).code, 0);
  ASSERT_EQ(mfuser(str_cat("segment ", common, " --device cuda --precision bf16 --out ", q(ws.dir / "bf16")), ws.dir).code, 0);
  const Tensor cpu = read_label((ws.dir / "cpu" / "in_label.png").string());
  const Tensor gpu = read_label((ws.dir / "cuda" / "in_label.png").string());
  int64_t differ = 0;
  for (int64_t i = 0; i < cpu.numel(); ++i) differ += cpu.data<uint8_t>()[i] != gpu.data<uint8_t>()[i];
  EXPECT_LE(differ, cpu.numel() / 1000) << differ << " of " << cpu.numel() << " pixels differ";
  EXPECT_TRUE(fs::exists(ws.dir / "bf16" / "in_label.png"));
}

TEST(EvalCli, MetricsJsonAndReportedLabelErrors) {
  MFUSER_SEED_TRACE();
  Workspace ws;
  const fs::path root = ws.dir / "cityscapes";
  const fs::path img_dir = root / "leftImg8bit" / "val" / "town", gt_dir = root / "gtFine" / "val" / "town";
  fs::create_directories(img_dir);
  fs::create_directories(gt_dir);
  // a_: good (trainIds with some ignore), b_: good (labelIds, mapped), c_: label of another size, d_: value 19
  std::vector<Tensor> images, labels;
  for (const char* name : {"a", "b", "c", "d"}) {
    const Tensor rgb = random_rgb(64, 96);
    write_png((img_dir / str_cat(name, "_leftImg8bit.png")).string(), rgb);
    const bool ids = name[0] == 'b';
    const int64_t h = name[0] == 'c' ? 60 : 64;
    Tensor label = Tensor::empty({h, 96}, DType::u8);
    for (int64_t i = 0; i < label.numel(); ++i) {
      const uint64_t v = test::rng()() % 22;
      label.data<uint8_t>()[i] = ids ? uint8_t(v + 7) : uint8_t(v >= 19 ? 255 : v);
    }
    if (name[0] == 'd') label.data<uint8_t>()[5] = 19;
    write_png((gt_dir / str_cat(name, ids ? "_gtFine_labelIds.png" : "_gtFine_labelTrainIds.png")).string(), label);
    images.push_back(rgb);
    labels.push_back(label);
  }
  const fs::path json_path = ws.dir / "metrics.json";
  const CliRun r = mfuser(str_cat("eval --weights ", q(ws.weights), " --dataset cityscapes --root ", q(root), " ", kScale,
                               " --json ", q(json_path)),
                       ws.dir);
  EXPECT_EQ(r.code, 1);  // two images failed
  EXPECT_NE(r.out.find("per class results:"), std::string::npos);
  EXPECT_NE(r.out.find("| aAcc | mIoU | mAcc |"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("c_gtFine_labelTrainIds.png' is 96x60 (WxH) but its image"), std::string::npos);
  EXPECT_NE(r.err.find("d_gtFine_labelTrainIds.png': 1 pixel(s) with values outside 0..18 and 255"), std::string::npos);

  const nlohmann::json j = nlohmann::json::parse(read_text(json_path));
  EXPECT_EQ(j.at("images").get<int>(), 4);
  EXPECT_EQ(j.at("images_evaluated").get<int>(), 2);
  ASSERT_EQ(j.at("failures").size(), 2u);
  EXPECT_NE(j.at("failures")[0].at("label").get<std::string>().find("c_gtFine"), std::string::npos);

  // The same numbers in-process: the Segmenter on a and b, their labels in trainIds.
  apps::SegmenterOptions o;
  o.scale = {96, 64};
  apps::Segmenter seg(ws.weights.string(), ws.model_config, o);
  apps::IouAccumulator acc(19);
  const auto samples = apps::list_dataset("cityscapes", root.string(), "val");
  for (size_t i = 0; i < 2; ++i) acc.add(seg.segment(images[i]).labels, apps::load_label(samples[i], 64, 96, 19));
  const apps::IouMetrics m = apps::compute_metrics(acc);
  EXPECT_DOUBLE_EQ(j.at("aAcc").get<double>(), m.aacc * 100);
  if (std::isnan(m.miou)) EXPECT_TRUE(j.at("mIoU").is_null());
  else EXPECT_DOUBLE_EQ(j.at("mIoU").get<double>(), m.miou * 100);
  for (int k = 0; k < 19; ++k) {
    EXPECT_EQ(j.at("per_class")[size_t(k)].at("area_label").get<int64_t>(), acc.area_label()[size_t(k)]) << k;
    EXPECT_EQ(j.at("per_class")[size_t(k)].at("area_intersect").get<int64_t>(), acc.area_intersect()[size_t(k)]) << k;
  }
  int64_t counted = 0;
  for (int64_t v : acc.area_label()) counted += v;
  int64_t valid = 0;
  for (size_t i = 0; i < 2; ++i) {
    const Tensor l = apps::load_label(samples[i], 64, 96, 19);
    for (int64_t p = 0; p < l.numel(); ++p) valid += l.data<uint8_t>()[p] != 255;
  }
  EXPECT_EQ(counted, valid);
}

}  // namespace
}  // namespace mfuser
