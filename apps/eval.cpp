// mfuser eval: mIoU of the test-time pipeline on a data set in its standard layout (apps/datasets.h), printed
// as mmseg prints it, optionally written as JSON.
#include <cmath>
#include <cstdio>
#include <optional>
#include <fstream>
#include <nlohmann/json.hpp>

#include "apps/commands.h"
#include "apps/datasets.h"
#include "apps/progress.h"
#include "apps/train_data.h"
#include "graph/model/config.h"
#include "loaders/image.h"

namespace mfuser::apps {

namespace {

constexpr const char* kEvalUsage =
    "usage: mfuser eval --weights FILE.safetensors [--config CONFIG.json]\n"
    "                   --dataset cityscapes|bdd|mapillary|gta|synthetic [--root DIR] [--split val]\n"
    "                   [--json FILE] [--limit N] [--scale WxH] [--mode slide|whole] [--seed S] [--crop C]\n"
    "                   [--batch N] [--device cpu|cuda] [--precision fp32|bf16] [--threads N] [--fail-fast]\n"
    "Layouts under --root (SPLIT = --split):\n"
    "  cityscapes  leftImg8bit/SPLIT/CITY/*_leftImg8bit.png, gtFine/SPLIT/CITY/*_gtFine_labelTrainIds.png\n"
    "              (or *_gtFine_labelIds.png, mapped to trainIds)\n"
    "  bdd         images/10k/SPLIT/*.jpg, labels/sem_seg/masks/SPLIT/*.png (or colormaps/SPLIT/*.png)\n"
    "  mapillary   validation/images/*.jpg, validation/labels/*_labelTrainIds.png or *.png, in trainIds\n"
    "              (SPLIT val = validation, train = training)\n"
    "  gta         images/*.png, labels/*_labelTrainIds.png or labels/*.png (labelIds, mapped)\n"
    "  synthetic   no files: the project's generated shapes-and-textures images (apps/train_data.h), split\n"
    "              val (held out: never a training image) or train; --seed S (default 0), --crop C (default\n"
    "              the model config's slide crop; val images are C x 1.5C), --limit N images (default 200)\n"
    "Labels are trainIds 0..18 with 255 ignored; an image whose label has another value or another size is\n"
    "reported and not counted (exit code 1). Default scale: 2048x1024 (cityscapes, mapillary), 1280x720 (bdd, gta),\n"
    "the images' own size (synthetic val).\n";

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

}  // namespace

int eval(const std::vector<std::string>& args) {
  PipelineArgs a;
  std::string dataset, root, split = "val", json_path;
  int64_t limit = 0;
  std::optional<int64_t> crop;  // synthetic only
  std::optional<uint64_t> seed;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& k = args[i];
    if (k == "--help" || k == "-h") {
      std::fputs(kEvalUsage, stdout);
      return 0;
    }
    if (parse_pipeline_option(args, i, a, kEvalUsage)) continue;
    MFUSER_CHECK(i + 1 < args.size() && (k == "--dataset" || k == "--root" || k == "--split" || k == "--json" ||
                                         k == "--limit" || k == "--seed" || k == "--crop"),
                 k.rfind("--", 0) == 0 && i + 1 >= args.size() ? str_cat(k, " needs a value") : str_cat("unknown argument '", k, "'"),
                 "\n", kEvalUsage);
    const std::string& v = args[++i];
    if (k == "--dataset") dataset = v;
    else if (k == "--root") root = v;
    else if (k == "--split") split = v;
    else if (k == "--json") json_path = v;
    else if (k == "--seed") seed = uint64_t(parse_int(k, v, 0));
    else if (k == "--crop") crop = parse_int(k, v, 16);
    else limit = parse_int(k, v, 1);
  }
  MFUSER_CHECK(!dataset.empty(), "--dataset is required\n", kEvalUsage);
  const bool synthetic = dataset == "synthetic";
  MFUSER_CHECK(synthetic || !root.empty(), "--root is required\n", kEvalUsage);
  MFUSER_CHECK(synthetic || (!crop && !seed), "--seed and --crop apply to --dataset synthetic only");

  // The images to score: files listed from the data-set folder, or generated synthetic ones.
  std::vector<Sample> samples;
  int64_t count = 0;
  SyntheticSplit synthetic_part = SyntheticSplit::val;
  Scale test_scale;  // synthetic: set once the crop is known
  std::string source = root;
  if (synthetic) {
    synthetic_part = synthetic_split(split);
    count = limit > 0 ? limit : 200;
  } else {
    test_scale = dataset_info(dataset).test_scale;
    samples = list_dataset(dataset, root, split);
    if (limit > 0 && int64_t(samples.size()) > limit) samples.resize(size_t(limit));
    count = int64_t(samples.size());
  }

  SegmenterOptions options = finish_pipeline_args(a, test_scale);
  model::ModelConfig config = model::ModelConfig::load(a.config);
  const int64_t synthetic_crop = crop.value_or(config.slide_crop);
  const uint64_t synthetic_seed = seed.value_or(0);
  if (synthetic) {
    if (a.scale.empty()) options.scale = {synthetic_crop * 3 / 2, synthetic_crop};  // a val image's own size
    source = str_cat("generated, seed ", synthetic_seed, ", crop ", synthetic_crop);
  }
  const auto image_name = [&](int64_t i) {
    return synthetic ? str_cat("synthetic/", split, "/", i) : samples[size_t(i)].image;
  };
  const int num_classes = config.num_classes;
  // image and label together, before the forward: a broken label costs no forward
  const auto load = [&](int64_t i) -> LabeledImage {
    if (synthetic) return synthetic_image(synthetic_seed, i, synthetic_crop, synthetic_part);
    return load_labeled_image(samples[size_t(i)], num_classes);
  };

  const std::vector<std::string> class_names = config.class_names;
  std::fprintf(stderr, "mfuser eval: %s %s, %lld image(s), scale %lldx%lld, %s on %s (%s)\n", dataset.c_str(),
               split.c_str(), (long long)count, (long long)options.scale.long_edge,
               (long long)options.scale.short_edge, a.mode.c_str(), options.device.str().c_str(),
               options.precision.c_str());
  Segmenter segmenter(a.weights, std::move(config), options);

  IouAccumulator acc(num_classes);
  nlohmann::json failures = nlohmann::json::array();
  Progress progress(count, "eval");
  int64_t done = 0;
  for (int64_t i = 0; i < count; ++i) {
    const std::string name = image_name(i);
    bool failed = false;
    try {
      const LabeledImage li = load(i);
      acc.add(segmenter.segment(li.image).labels, li.label);
    } catch (const std::exception& e) {
      failed = true;
      failures.push_back({{"image", name},
                          {"label", synthetic ? name : samples[size_t(i)].label},
                          {"error", e.what()}});
      progress.message(failure_message("mfuser eval", name, e.what()));
    }
    ++done;
    progress.step(name, failed);
    if (failed && a.fail_fast) {
      progress.message("mfuser eval: stopping at the first failure (--fail-fast)");
      break;
    }
  }
  progress.finish();
  const double seconds = progress.elapsed_seconds();

  const IouMetrics m = compute_metrics(acc);
  std::printf("%s", format_metrics(m, class_names).c_str());
  std::printf("%s\n", run_summary("mfuser eval", done, int64_t(failures.size()), seconds, options.device).c_str());
  if (!failures.empty())
    std::fprintf(stderr, "mfuser eval: %zu image(s) failed and are not counted in the metrics\n", failures.size());

  if (!json_path.empty()) {
    nlohmann::json j;
    j["dataset"] = dataset;
    j["root"] = source;
    j["split"] = split;
    j["weights"] = a.weights;
    j["scale"] = {options.scale.long_edge, options.scale.short_edge};
    j["mode"] = a.mode;
    j["device"] = options.device.str();
    j["precision"] = options.precision;
    j["images"] = done;
    j["images_evaluated"] = acc.images();
    j["seconds_per_image"] = done ? seconds / double(done) : 0.0;
    j["aAcc"] = number_or_null(m.aacc * 100);
    j["mIoU"] = number_or_null(m.miou * 100);
    j["mAcc"] = number_or_null(m.macc * 100);
    nlohmann::json per_class = nlohmann::json::array();
    for (int k = 0; k < num_classes; ++k) {
      const size_t i = size_t(k);
      per_class.push_back({{"class", i < class_names.size() ? class_names[i] : std::to_string(k)},
                           {"IoU", number_or_null(m.iou[i] * 100)},
                           {"Acc", number_or_null(m.acc[i] * 100)},
                           {"area_intersect", acc.area_intersect()[i]},
                           {"area_union", acc.area_union()[i]},
                           {"area_pred", acc.area_pred()[i]},
                           {"area_label", acc.area_label()[i]}});
    }
    j["per_class"] = per_class;
    j["failures"] = failures;
    std::ofstream out(json_path);
    MFUSER_CHECK(out.good(), "cannot write --json file '", json_path, "'");
    out << j.dump(1) << "\n";
    MFUSER_CHECK(out.good(), "error writing --json file '", json_path, "'");
  }
  return failures.empty() ? 0 : 1;
}

}  // namespace mfuser::apps
