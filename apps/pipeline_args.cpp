// The options shared by `mfuser segment` and `mfuser eval` (see commands.h).
#include <filesystem>

#include "apps/commands.h"
#include "runtime/parallel.h"

namespace mfuser::apps {

bool parse_pipeline_option(const std::vector<std::string>& args, size_t& i, PipelineArgs& a, const char* usage) {
  const std::string& k = args[i];
  const auto value = [&]() -> const std::string& {
    MFUSER_CHECK(i + 1 < args.size(), k, " needs a value\n", usage);
    return args[++i];
  };
  if (k == "--weights") a.weights = value();
  else if (k == "--config") a.config = value();
  else if (k == "--device") a.device = value();
  else if (k == "--precision") a.precision = value();
  else if (k == "--mode") a.mode = value();
  else if (k == "--scale") a.scale = value();
  else if (k == "--batch") a.batch = parse_int(k, value(), 1);
  else if (k == "--threads") a.threads = parse_int(k, value(), 1);
  else if (k == "--fail-fast") a.fail_fast = true;
  else return false;
  return true;
}

namespace {

Scale parse_scale(const std::string& text) {
  const size_t x = text.find('x');
  MFUSER_CHECK(x != std::string::npos, "--scale expects WIDTHxHEIGHT (e.g. 2048x1024), got '", text, "'");
  const int w = parse_int("--scale width", text.substr(0, x), 1);
  const int h = parse_int("--scale height", text.substr(x + 1), 1);
  return {w, h};  // mmcv takes the larger as the long edge, whatever the order
}

}  // namespace

SegmenterOptions finish_pipeline_args(PipelineArgs& a, Scale default_scale) {
  namespace fs = std::filesystem;
  MFUSER_CHECK(!a.weights.empty(), "--weights is required");
  MFUSER_CHECK(fs::is_regular_file(a.weights), "weights file '", a.weights, "' does not exist");
  const bool default_config = a.config.empty();
  if (default_config) a.config = (fs::path(a.weights).parent_path() / "config.json").string();
  MFUSER_CHECK(fs::is_regular_file(a.config), "config file '", a.config, "' does not exist",
               default_config ? " (the default: config.json next to the weights; pass --config)" : "");
  MFUSER_CHECK(a.device == "cpu" || a.device == "cuda", "--device must be cpu or cuda, got '", a.device, "'");
  MFUSER_CHECK(a.precision == "fp32" || a.precision == "bf16", "--precision must be fp32 or bf16, got '",
               a.precision, "'");
  MFUSER_CHECK(a.mode == "slide" || a.mode == "whole", "--mode must be slide or whole, got '", a.mode, "'");
  if (a.threads > 0) set_num_threads(a.threads);
  SegmenterOptions o;
  o.device = a.device == "cuda" ? Device::cuda() : Device::cpu();
  o.precision = a.precision;
  o.mode = a.mode == "whole" ? InferenceMode::whole : InferenceMode::slide;
  o.batch = a.batch;
  o.scale = a.scale.empty() ? default_scale : parse_scale(a.scale);
  return o;
}

}  // namespace mfuser::apps
