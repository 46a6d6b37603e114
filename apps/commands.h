// The mfuser subcommands; each takes the arguments after its name and returns the process exit code.
#pragma once

#include <string>
#include <vector>

#include "apps/pipeline.h"

namespace mfuser::apps {

int bench(const std::vector<std::string>& args);
int segment(const std::vector<std::string>& args);
int eval(const std::vector<std::string>& args);
int init(const std::vector<std::string>& args);
int train(const std::vector<std::string>& args);

// An integer option value >= min, or an Error naming the option.
int parse_int(const std::string& option, const std::string& value, int min);

// The options segment and eval share: the model files and how the Segmenter runs.
struct PipelineArgs {
  std::string weights, config;
  std::string device = "cpu", precision = "fp32", mode = "slide";
  std::string scale;  // "WxH"; empty: the data set's test scale
  int batch = 0, threads = 0;
  bool fail_fast = false;
};

// If args[i] is one of the shared options, consumes it (and its value, advancing i) and returns true.
bool parse_pipeline_option(const std::vector<std::string>& args, size_t& i, PipelineArgs& a, const char* usage);
// Checks the files (a missing weights/config file is a clear error; --config defaults to config.json next to
// the weights), applies --threads, and returns the Segmenter options for a data set's default scale.
SegmenterOptions finish_pipeline_args(PipelineArgs& a, Scale default_scale);

}  // namespace mfuser::apps
