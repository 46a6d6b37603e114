// mfuser segment: the test-time pipeline (apps/pipeline.h) over image files and folders; writes for each
// image NAME_label.png (trainIds), NAME_color.png (Cityscapes palette), NAME_overlay.png (0.5 blend) and with
// --save-logits NAME_logits.safetensors ("logits" f32 [19, H, W] at the image's size).
#include <cstdio>
#include <filesystem>

#include "apps/commands.h"
#include "apps/datasets.h"
#include "apps/progress.h"
#include "graph/model/config.h"
#include "loaders/image.h"
#include "loaders/safetensors.h"

namespace mfuser::apps {

namespace {

constexpr const char* kSegmentUsage =
    "usage: mfuser segment --weights FILE.safetensors [--config CONFIG.json] INPUT... --out DIR\n"
    "                      [--dataset cityscapes|bdd|mapillary|gta] [--scale WxH] [--mode slide|whole] [--batch N]\n"
    "                      [--device cpu|cuda] [--precision fp32|bf16] [--threads N] [--save-logits] [--fail-fast]\n"
    "INPUT: image files or folders (searched recursively for .png/.jpg/.jpeg, sorted).\n"
    "Writes NAME_label.png (trainIds), NAME_color.png (Cityscapes colours), NAME_overlay.png (0.5 blend) and,\n"
    "with --save-logits, NAME_logits.safetensors (f32 [19, H, W]); files from a folder keep their sub-folders.\n"
    "--scale: keep-ratio test scale (default 2048x1024, --dataset bdd or gta: 1280x720). --batch: crops per\n"
    "forward (default: all windows of an image). --config defaults to config.json next to the weights.\n"
    "An image that cannot be read is reported and skipped (exit code 1 at the end); --fail-fast stops there.\n";

}  // namespace

int segment(const std::vector<std::string>& args) {
  namespace fs = std::filesystem;
  PipelineArgs a;
  std::string out_dir, dataset = "cityscapes";
  std::vector<std::string> inputs;
  bool save_logits = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& k = args[i];
    if (k == "--help" || k == "-h") {
      std::fputs(kSegmentUsage, stdout);
      return 0;
    }
    if (parse_pipeline_option(args, i, a, kSegmentUsage)) continue;
    if (k == "--out" || k == "--dataset") {
      MFUSER_CHECK(i + 1 < args.size(), k, " needs a value\n", kSegmentUsage);
      (k == "--out" ? out_dir : dataset) = args[++i];
    } else if (k == "--save-logits") {
      save_logits = true;
    } else {
      MFUSER_CHECK(k.rfind("--", 0) != 0, "unknown option '", k, "'\n", kSegmentUsage);
      inputs.push_back(k);
    }
  }
  MFUSER_CHECK(!inputs.empty(), "no input images\n", kSegmentUsage);
  MFUSER_CHECK(!out_dir.empty(), "--out DIR is required\n", kSegmentUsage);
  const SegmenterOptions options = finish_pipeline_args(a, dataset_info(dataset).test_scale);
  const std::vector<InputImage> images = list_inputs(inputs);
  fs::create_directories(out_dir);

  model::ModelConfig config = model::ModelConfig::load(a.config);
  std::fprintf(stderr, "mfuser segment: %zu image(s), %s, scale %lldx%lld, %s on %s (%s)\n", images.size(),
               config.description.c_str(), (long long)options.scale.long_edge, (long long)options.scale.short_edge,
               a.mode.c_str(), options.device.str().c_str(), options.precision.c_str());
  Segmenter segmenter(a.weights, std::move(config), options);

  Progress progress(int64_t(images.size()), "segment");
  int64_t failures = 0, done = 0;
  for (const InputImage& img : images) {
    bool failed = false;
    try {
      const Tensor rgb = read_rgb(img.path);
      const Segmentation result = segmenter.segment(rgb, save_logits);
      const fs::path base = fs::path(out_dir) / img.out_stem;
      if (base.has_parent_path()) fs::create_directories(base.parent_path());
      const Tensor color = colorize(result.labels);
      write_png(base.string() + "_label.png", result.labels);
      write_png(base.string() + "_color.png", color);
      write_png(base.string() + "_overlay.png", overlay(rgb, color, 0.5));
      if (save_logits)
        write_safetensors(base.string() + "_logits.safetensors", {{"logits", result.logits}},
                          {{"image", img.path}, {"scale", str_cat(options.scale.long_edge, "x", options.scale.short_edge)},
                           {"mode", a.mode}});
    } catch (const std::exception& e) {
      failed = true;
      ++failures;
      progress.message(failure_message("mfuser segment", img.path, e.what()));
    }
    ++done;
    progress.step(img.path, failed);
    if (failed && a.fail_fast) {
      progress.message("mfuser segment: stopping at the first failure (--fail-fast)");
      break;
    }
  }
  progress.finish();
  std::printf("%s\n", run_summary("mfuser segment", done, failures, progress.elapsed_seconds(), options.device).c_str());
  if (failures) std::fprintf(stderr, "mfuser segment: %lld image(s) failed\n", (long long)failures);
  return failures ? 1 : 0;
}

}  // namespace mfuser::apps
