// mfuser init: a complete checkpoint of the architecture with made-up weights (seeded), for demos, smoke
// tests and benchmarks when no trained weights are at hand. The output says loudly that it is untrained.
#include <filesystem>
#include <fstream>

#include "apps/commands.h"
#include "graph/model/mfuser.h"
#include "loaders/safetensors.h"

namespace mfuser::apps {

int init(const std::vector<std::string>& args) {
  std::string config_path, out_dir;
  int seed = 0;
  bool force = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const auto value = [&]() -> const std::string& {
      MFUSER_CHECK(i + 1 < args.size(), "init: ", args[i], " needs a value");
      return args[++i];
    };
    if (args[i] == "--config") config_path = value();
    else if (args[i] == "--out") out_dir = value();
    else if (args[i] == "--seed") seed = parse_int("--seed", value(), 0);
    else if (args[i] == "--force") force = true;
    else MFUSER_CHECK(false, "init: unknown option '", args[i], "'\nusage: mfuser init --config CONFIG.json --out DIR [--seed N] [--force]");
  }
  MFUSER_CHECK(!config_path.empty() && !out_dir.empty(), "usage: mfuser init --config CONFIG.json --out DIR [--seed N] [--force]");
  namespace fs = std::filesystem;
  const fs::path weights = fs::path(out_dir) / "model.safetensors", config = fs::path(out_dir) / "config.json";
  MFUSER_CHECK(force || (!fs::exists(weights) && !fs::exists(config)), "init: ", out_dir,
               " already holds a model; pass --force to overwrite it");
  const model::MfuserModel model(model::WeightStore::synthesize(uint64_t(seed)), model::ModelConfig::load(config_path));
  fs::create_directories(out_dir);
  write_safetensors(weights.string(), model.weights().synthesized(),
                    {{"format", "mfuser"}, {"untrained", "random weights from `mfuser init`"}, {"seed", std::to_string(seed)}});
  fs::copy_file(config_path, config, fs::copy_options::overwrite_existing);
  std::printf("wrote %s (%zu tensors, UNTRAINED random weights, seed %d) and %s\n", weights.c_str(),
              model.weights().synthesized().size(), seed, config.c_str());
  return 0;
}

}  // namespace mfuser::apps
