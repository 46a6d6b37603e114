// mfuser: the command-line entry point. Subcommands are added as the runtime grows.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "apps/progress.h"
#include "loaders/safetensors.h"
#include "runtime/cuda.h"

namespace {

using namespace mfuser;
using apps::human_bytes;

constexpr const char* kUsage =
    "usage: mfuser <command> [args]\n"
    "\n"
    "commands:\n"
    "  inspect FILE.safetensors   list the tensors of a file (validates it fully)\n"
    "  devices                    show whether CUDA is usable and which devices exist\n"
    "  bench --weights FILE ...   time the crop forward beside the PyTorch oracle (bench --help)\n"
    "  segment --weights FILE INPUT... --out DIR\n"
    "                             segment images: label, colour and overlay PNGs (segment --help)\n"
    "  eval --weights FILE --dataset NAME --root DIR\n"
    "                             mIoU on cityscapes|bdd|mapillary|gta in its standard layout (eval --help)\n"
    "  init --config C --out DIR  write a checkpoint of untrained random weights for the architecture\n"
    "  train --weights FILE --out DIR\n"
    "                             fine-tune the model (AdamW, poly schedule), checkpoints and logs in DIR;\n"
    "                             --resume DIR continues a run exactly (train --help)\n"
    "  help                       this text\n";

int inspect(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    std::fputs("usage: mfuser inspect FILE.safetensors\n", stderr);
    return 2;
  }
  const SafetensorsReader reader(args[0]);
  uint64_t total_bytes = 0, total_elems = 0;
  for (const SafetensorsEntry& e : reader.entries()) {
    std::string shape = "[";
    uint64_t n = 1;
    for (size_t i = 0; i < e.shape.size(); ++i) {
      shape += (i ? ", " : "") + std::to_string(e.shape[i]);
      n *= uint64_t(e.shape[i]);
    }
    shape += "]";
    std::printf("%-72s %-5s %-24s %10s\n", e.name.c_str(), e.dtype.c_str(), shape.c_str(),
                human_bytes(double(e.end - e.begin)).c_str());
    total_bytes += e.end - e.begin;
    total_elems += n;
  }
  for (const auto& [k, v] : reader.metadata()) std::printf("metadata %s = %s\n", k.c_str(), v.c_str());
  std::printf("%zu tensors, %llu elements, %s\n", reader.entries().size(), static_cast<unsigned long long>(total_elems),
              human_bytes(double(total_bytes)).c_str());
  return 0;
}

int devices() {
  std::printf("built with CUDA: %s\n", cuda::built_with_cuda() ? "yes" : "no");
  if (!cuda::available()) {
    std::printf("CUDA unavailable: %s\n", cuda::unavailable_reason().c_str());
    return 0;
  }
  for (int d = 0; d < cuda::device_count(); ++d) {
    const cuda::DeviceInfo info = cuda::device_info(d);
    std::printf("cuda:%d  %s  sm_%d%d  %d SMs  %s\n", d, info.name.c_str(), info.cc_major, info.cc_minor,
                info.sm_count, human_bytes(double(info.total_memory)).c_str());
  }
  return 0;
}

}  // namespace

int mfuser::apps::parse_int(const std::string& option, const std::string& value, int min) {
  size_t used = 0;
  int v = 0;
  try {
    v = std::stoi(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  MFUSER_CHECK(used == value.size() && v >= min, option, " expects an integer >= ", min, ", got '", value, "'");
  return v;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  try {
    if (command == "inspect") return inspect(args);
    if (command == "devices") return devices();
    if (command == "bench") return apps::bench(args);
    if (command == "segment") return apps::segment(args);
    if (command == "eval") return apps::eval(args);
    if (command == "init") return apps::init(args);
    if (command == "train") return apps::train(args);
    if (command == "help" || command == "--help" || command == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    std::fprintf(stderr, "mfuser: unknown command '%s'\n\n%s", command.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mfuser %s: error: %s\n", command.c_str(), e.what());
    return 1;
  }
}
