// apps/pipeline: the test-time pipeline against the PyTorch oracle (golden data from tests/apps/apps_golden.py,
// run by ctest fixtures with a fresh seed): mmseg's slide windows and keep-ratio sizes, the cv2-exact uint8
// resize (against cv2 itself when the golden script can import it, else against its Python re-implementation:
// the file's metadata says which), CLIP normalisation bit for bit, and the whole Segmenter on the tiny model's
// weights against the oracle's slide_inference / encode_decode in float64.
#include "apps/pipeline.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>

#include "graph/model/config.h"
#include "loaders/config.h"
#include "loaders/safetensors.h"
#include "tests/common/test_util.h"

namespace mfuser {
namespace {

using apps::Window;

std::string golden_dir() {
  const char* root = std::getenv("MFUSER_GOLDEN_DIR");
  if (!root) throw Error("MFUSER_GOLDEN_DIR is not set: run this test through ctest, which generates the golden data");
  return root;
}

const SafetensorsReader& pipeline_golden() {
  static const SafetensorsReader reader(golden_dir() + "/apps/pipeline.safetensors");
  return reader;
}

std::vector<int64_t> split_ints(const std::string& s, char sep) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, sep)) out.push_back(std::stoll(part));
  return out;
}

TEST(SlideWindows, MatchTheOracleForEverySize) {
  const SafetensorsReader& g = pipeline_golden();
  SCOPED_TRACE("golden seed " + g.metadata().at("seed"));
  int grids = 0;
  for (const SafetensorsEntry& e : g.entries()) {
    if (e.name.rfind("windows/", 0) != 0) continue;
    // windows/{h}x{w}/{crop_h}x{crop_w}/{stride_h}x{stride_w}
    std::vector<std::string> parts;
    std::stringstream in(e.name);
    for (std::string p; std::getline(in, p, '/');) parts.push_back(p);
    ASSERT_EQ(parts.size(), 4u) << e.name;
    const auto size = split_ints(parts[1], 'x'), crop = split_ints(parts[2], 'x'), stride = split_ints(parts[3], 'x');
    const std::vector<Window> ours = apps::slide_windows(size[0], size[1], crop[0], crop[1], stride[0], stride[1]);
    const Tensor ref = g.view(e.name);  // [n, 4] (y1, y2, x1, x2)
    ASSERT_EQ(int64_t(ours.size()), ref.dim(0)) << e.name;
    const int64_t* r = ref.data<int64_t>();
    for (size_t i = 0; i < ours.size(); ++i)
      EXPECT_EQ(ours[i], (Window{r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]})) << e.name << " window " << i;
    ++grids;
  }
  EXPECT_GE(grids, 10);
  std::printf("[ windows  ] %d window grids equal the oracle's\n", grids);
}

TEST(SlideWindows, CityscapesIsThreeBySixFullCrops) {
  // The documented rule: ceil((1024 - 512) / 341) + 1 = 3 rows, ceil((2048 - 512) / 341) + 1 = 6 columns.
  const std::vector<Window> w = apps::slide_windows(1024, 2048, 512, 512, 341, 341);
  ASSERT_EQ(w.size(), 18u);
  for (const Window& b : w) {
    EXPECT_EQ(b.y2 - b.y1, 512);
    EXPECT_EQ(b.x2 - b.x1, 512);
  }
  EXPECT_EQ(w.back(), (Window{512, 1024, 1536, 2048}));  // the last ones shifted back to the border
  // smaller than the crop: one window, clipped to the image
  EXPECT_EQ(apps::slide_windows(300, 400, 512, 512, 341, 341), (std::vector<Window>{{0, 300, 0, 400}}));
}

TEST(RescaleSize, MatchesTheOracle) {
  const Tensor rows = pipeline_golden().view("rescale");  // (w, h, long, short, new_w, new_h)
  const int64_t* r = rows.data<int64_t>();
  for (int64_t i = 0; i < rows.dim(0); ++i, r += 6) {
    const auto [w, h] = apps::rescale_size(r[0], r[1], {r[2], r[3]});
    EXPECT_EQ(w, r[4]) << r[0] << "x" << r[1] << " at " << r[2] << "x" << r[3];
    EXPECT_EQ(h, r[5]) << r[0] << "x" << r[1] << " at " << r[2] << "x" << r[3];
  }
  EXPECT_EQ(apps::rescale_size(2048, 1024, {2048, 1024}), (std::pair<int64_t, int64_t>{2048, 1024}));
  EXPECT_EQ(apps::rescale_size(1280, 720, {1280, 720}), (std::pair<int64_t, int64_t>{1280, 720}));
}

TEST(ResizeU8Linear, BitExactAgainstTheCv2Golden) {
  const SafetensorsReader& g = pipeline_golden();
  SCOPED_TRACE("golden seed " + g.metadata().at("seed"));
  std::printf("[ resize   ] reference: %s\n", g.metadata().at("resize_reference").c_str());
  int cases = 0;
  int64_t pixels = 0;
  for (int i = 0; g.contains(str_cat("resize/", i, "/src")); ++i) {
    const Tensor src = g.view(str_cat("resize/", i, "/src")), ref = g.view(str_cat("resize/", i, "/dst"));
    const Tensor ours = apps::resize_u8_linear(src, ref.dim(0), ref.dim(1));
    ASSERT_EQ(ours.shape(), ref.shape()) << "case " << i;
    const uint8_t *a = ours.data<uint8_t>(), *b = ref.data<uint8_t>();
    int64_t differ = 0, first = -1;
    for (int64_t k = 0; k < ref.numel(); ++k)
      if (a[k] != b[k]) {
        if (first < 0) first = k;
        ++differ;
      }
    EXPECT_EQ(differ, 0) << "case " << i << ": " << src.str() << " -> " << ref.str() << ", first difference at "
                         << first << ": ours " << (first >= 0 ? int(a[first]) : 0) << ", reference "
                         << (first >= 0 ? int(b[first]) : 0);
    ++cases;
    pixels += ref.numel();
  }
  EXPECT_GE(cases, 20);
  std::printf("[ resize   ] %d resizes, %lld values, all equal\n", cases, (long long)pixels);
}

TEST(ResizeU8Linear, SameSizeIsACopy) {
  Tensor src = Tensor::empty({5, 7, 3}, DType::u8);
  for (int64_t i = 0; i < src.numel(); ++i) src.data<uint8_t>()[i] = uint8_t(i * 37);
  const Tensor out = apps::resize_u8_linear(src, 5, 7);
  EXPECT_EQ(std::memcmp(out.data<uint8_t>(), src.data<uint8_t>(), size_t(src.numel())), 0);
  EXPECT_NE(out.data<uint8_t>(), src.data<uint8_t>());
}

// The tiny model's golden folder (fixture golden_model_tiny).
struct TinyModel {
  std::string weights;
  model::ModelConfig config;
  std::string seed;
};

TinyModel tiny_model() {
  const std::string dir = golden_dir() + "/model_tiny";
  const Config manifest = Config::load(dir + "/manifest.json");
  return {dir + "/model.safetensors", model::ModelConfig::from(manifest.section("config")),
          std::to_string(manifest.get<int64_t>("seed"))};
}

TEST(ClipNormalize, BitExactAgainstTheOracle) {
  // The model fixture's input: "rgb" u8 [2, 3, 64, 64] and "img" = the oracle's normalize(rgb).
  const SafetensorsReader inputs(golden_dir() + "/model_tiny/input.safetensors");
  const Tensor rgb = inputs.view("rgb"), img = inputs.view("img");
  const int64_t h = rgb.dim(2), w = rgb.dim(3);
  for (int64_t b = 0; b < rgb.dim(0); ++b) {
    Tensor hwc = Tensor::empty({h, w, 3}, DType::u8);
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t i = 0; i < h * w; ++i)
        hwc.data<uint8_t>()[i * 3 + c] = rgb.data<uint8_t>()[(b * 3 + c) * h * w + i];
    const Tensor ours = apps::clip_normalize(hwc);
    ASSERT_EQ(ours.shape(), (Shape{1, 3, h, w}));
    EXPECT_EQ(std::memcmp(ours.data<float>(), img.data<float>() + b * 3 * h * w, size_t(3 * h * w) * sizeof(float)), 0)
        << "image " << b;
  }
}

TEST(ArgmaxClasses, FirstMaximumWins) {
  // [K = 3, 1, 3]: pixel 0 scores (1, 3, 3), pixel 1 (5, 5, 1), pixel 2 (2, 2, 2)
  const Tensor logits = Tensor::from_vector<float>({1, 5, 2, 3, 5, 2, 3, 1, 2}, {3, 1, 3});
  const Tensor labels = apps::argmax_classes(logits);
  EXPECT_EQ(labels.data<uint8_t>()[0], 1);
  EXPECT_EQ(labels.data<uint8_t>()[1], 0);
  EXPECT_EQ(labels.data<uint8_t>()[2], 0);
}

TEST(Segmenter, MatchesTheOracleOnTheTinyModel) {
  const TinyModel m = tiny_model();
  const SafetensorsReader g(golden_dir() + "/apps/segment.safetensors");
  SCOPED_TRACE("model seed " + m.seed + ", golden seed " + g.metadata().at("seed"));
  const nlohmann::json cases = nlohmann::json::parse(g.metadata().at("cases"));
  ASSERT_GE(cases.size(), 4u);
  for (const auto& c : cases) {
    const std::string name = c.at("name");
    SCOPED_TRACE(name);
    apps::SegmenterOptions o;
    o.scale = {c.at("scale")[0].get<int64_t>(), c.at("scale")[1].get<int64_t>()};
    o.mode = c.at("mode") == "whole" ? apps::InferenceMode::whole : apps::InferenceMode::slide;
    o.batch = c.at("batch").get<int>();
    apps::Segmenter seg(m.weights, m.config, o);
    const apps::Segmentation out = seg.segment(g.view(name + "/rgb"), true);
    EXPECT_EQ(out.resized_h, c.at("resized")[0].get<int64_t>());
    EXPECT_EQ(out.resized_w, c.at("resized")[1].get<int64_t>());
    EXPECT_EQ(out.windows, c.at("windows").get<int64_t>());
    if (o.batch > 0) {  // a short last batch is a second shape
      EXPECT_EQ(seg.graphs_built(), out.windows > o.batch && out.windows % o.batch ? 2 : 1);
    }

    const Tensor ref = g.view(name + "/logits");
    ASSERT_EQ(out.logits.shape(), ref.shape());
    const test::ErrorStats e = test::compare(out.logits, ref);
    std::printf("[ segment  ] %-22s %s (oracle fp32: rel %.2e)\n", name.c_str(), test::describe(e).c_str(),
                c.at("oracle_fp32_rel_error").get<double>());
    EXPECT_EQ(e.nonfinite, 0);
    EXPECT_LE(e.rel_l2, 1e-5);

    // Labels identical. Only a pixel whose two best classes the float64 oracle separates by less than twice
    // our largest logit error could flip without a bug: such flips are reported (and must stay rare), any
    // other difference fails.
    const Tensor labels = g.view(name + "/labels"), margin = g.view(name + "/margin");
    ASSERT_EQ(out.labels.shape(), labels.shape());
    const double near_tie = 2 * e.max_abs;
    int64_t differ = 0, differ_clear = 0;
    for (int64_t i = 0; i < labels.numel(); ++i)
      if (out.labels.data<uint8_t>()[i] != labels.data<uint8_t>()[i]) {
        ++differ;
        if (margin.data<float>()[i] > near_tie) ++differ_clear;
      }
    EXPECT_EQ(differ_clear, 0) << differ_clear << " pixel(s) with a clear winner got another class";
    // rare: one in 10,000 pixels, or one in a smaller image (model seed 1783872993: 1 of 8,730 flipped)
    EXPECT_LE(differ, std::max<int64_t>(1, labels.numel() / 10000)) << differ << " pixel(s) differ";
    if (differ) std::printf("[ segment  ] %s: %lld near-tie pixel(s) flipped\n", name.c_str(), (long long)differ);
  }
}

TEST(Segmenter, RefusesBf16AndBadOptions) {
  const TinyModel m = tiny_model();
  apps::SegmenterOptions o;
  o.precision = "bf16";
  try {
    apps::Segmenter seg(m.weights, m.config, o);
    FAIL() << "bf16 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bf16 runs on CUDA only"), std::string::npos) << e.what();
  }
  o.precision = "fp16";
  EXPECT_THROW(apps::Segmenter(m.weights, m.config, o), Error);
  o.precision = "fp32";
  o.batch = -1;
  EXPECT_THROW(apps::Segmenter(m.weights, m.config, o), Error);
}

TEST(Segmenter, CachesOneExecutorPerCropBatchShape) {
  const TinyModel m = tiny_model();
  apps::SegmenterOptions o;
  o.scale = {128, 64};
  apps::Segmenter seg(m.weights, m.config, o);
  Tensor rgb = Tensor::empty({64, 128, 3}, DType::u8);
  for (int64_t i = 0; i < rgb.numel(); ++i) rgb.data<uint8_t>()[i] = uint8_t(i * 7919 >> 3);
  const apps::Segmentation a = seg.segment(rgb);
  const apps::Segmentation b = seg.segment(rgb);
  EXPECT_EQ(seg.graphs_built(), 1);  // 3 windows of 64x64, one batch, built once
  EXPECT_EQ(std::memcmp(a.labels.data<uint8_t>(), b.labels.data<uint8_t>(), size_t(a.labels.numel())), 0);
  EXPECT_FALSE(a.logits.defined());  // not asked for
}

TEST(Colorize, PaletteAndOverlay) {
  const Tensor labels = Tensor::from_vector<uint8_t>({0, 13, 255, 18}, {2, 2});
  const Tensor color = apps::colorize(labels);
  const uint8_t* c = color.data<uint8_t>();
  EXPECT_EQ((std::vector<int>{c[0], c[1], c[2]}), (std::vector<int>{128, 64, 128}));   // road
  EXPECT_EQ((std::vector<int>{c[3], c[4], c[5]}), (std::vector<int>{0, 0, 142}));      // car
  EXPECT_EQ((std::vector<int>{c[6], c[7], c[8]}), (std::vector<int>{0, 0, 0}));        // ignore
  EXPECT_EQ((std::vector<int>{c[9], c[10], c[11]}), (std::vector<int>{119, 11, 32}));  // bicycle
  Tensor rgb = Tensor::empty({2, 2, 3}, DType::u8);
  std::memset(rgb.data<uint8_t>(), 201, 12);
  const Tensor blend = apps::overlay(rgb, color, 0.5);
  EXPECT_EQ(blend.data<uint8_t>()[0], uint8_t((201 + 128) / 2));  // truncated, as mmseg's astype(uint8)
  EXPECT_EQ(blend.data<uint8_t>()[1], uint8_t((201 + 64) / 2));
}

}  // namespace
}  // namespace mfuser
