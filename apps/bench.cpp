// mfuser bench: times the crop forward of our graph and, in the same run, the PyTorch oracle's on the same
// weights and thread count; prints a table with memory and a per-operator breakdown.
#include "apps/commands.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <random>

#include "graph/executor.h"
#include "graph/model/mfuser.h"
#include "runtime/log.h"
#include "runtime/parallel.h"

namespace mfuser::apps {

namespace {

struct BenchArgs {
  std::string weights, config, device = "cpu";
  int batch = 1, size = 0, threads = 0, runs = 3, top = 12;
  bool oracle = true;
};

constexpr const char* kBenchUsage =
    "usage: mfuser bench --weights FILE.safetensors [--config CONFIG.json] [--device cpu|cuda]\n"
    "                    [--batch N] [--size PIXELS] [--threads N] [--runs N] [--top N] [--no-oracle]\n"
    "Times one forward of N crops (default: 1 crop at the config's size) and the PyTorch oracle beside it.\n"
    "--config defaults to config.json next to the weights. `make bench-cpu` makes random real-size weights.\n";

BenchArgs parse(const std::vector<std::string>& args) {
  BenchArgs a;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& k = args[i];
    const auto value = [&]() -> const std::string& {
      MFUSER_CHECK(i + 1 < args.size(), "bench: ", k, " needs a value\n", kBenchUsage);
      return args[++i];
    };
    if (k == "--weights") a.weights = value();
    else if (k == "--config") a.config = value();
    else if (k == "--device") a.device = value();
    else if (k == "--batch") a.batch = parse_int(k, value(), 1);
    else if (k == "--size") a.size = parse_int(k, value(), 16);
    else if (k == "--threads") a.threads = parse_int(k, value(), 1);
    else if (k == "--runs") a.runs = parse_int(k, value(), 1);
    else if (k == "--top") a.top = parse_int(k, value(), 0);
    else if (k == "--no-oracle") a.oracle = false;
    else MFUSER_CHECK(false, "bench: unknown option '", k, "'\n", kBenchUsage);
  }
  MFUSER_CHECK(!a.weights.empty(), "bench: --weights is required\n", kBenchUsage);
  MFUSER_CHECK(a.device == "cpu" || a.device == "cuda", "bench: --device must be cpu or cuda");
  if (a.config.empty()) a.config = (std::filesystem::path(a.weights).parent_path() / "config.json").string();
  return a;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs tools/reference/bench_oracle.py and returns its JSON line (empty on failure, with a warning).
std::string run_oracle(const BenchArgs& a, int size, int threads) {
  const std::string script = std::string(MFUSER_SOURCE_DIR) + "/tools/reference/bench_oracle.py";
  const std::string cmd = str_cat("/usr/bin/python3 '", script, "' --weights '", a.weights, "' --config '", a.config,
                                  "' --batch ", a.batch, " --size ", size, " --threads ", threads, " --runs ", a.runs,
                                  " --device ", a.device, " 2>&1");
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(cmd.c_str(), "r"), pclose);
  if (!pipe) return {};
  std::string out, last;
  std::array<char, 4096> buf;
  while (fgets(buf.data(), int(buf.size()), pipe.get())) {
    out += buf.data();
    last = buf.data();
  }
  if (last.rfind("{", 0) != 0) {
    log::warn("bench: the PyTorch oracle failed:\n", out);
    return {};
  }
  return last;
}

double json_number(const std::string& json, const std::string& key) {
  const size_t at = json.find("\"" + key + "\":");
  return at == std::string::npos ? 0.0 : std::atof(json.c_str() + at + key.size() + 3);
}

}  // namespace

int bench(const std::vector<std::string>& args) {
  const BenchArgs a = parse(args);
  const model::ModelConfig config = model::ModelConfig::load(a.config);
  const int size = a.size ? a.size : config.image_size;
  const int threads = a.threads ? a.threads : num_threads();
  set_num_threads(threads);
  const Device device = a.device == "cuda" ? Device::cuda() : Device::cpu();

  std::printf("mfuser bench: %s\n  %d x 3 x %d x %d crops on %s, %d CPU threads\n", config.description.c_str(), a.batch,
              size, size, device.str().c_str(), threads);
  const auto load_start = std::chrono::steady_clock::now();
  model::MfuserModel model(a.weights, config);
  auto graph = model.build(a.batch, size, size);
  graph::Executor executor(*graph, device);
  std::printf("  loaded and planned in %.1f s: %zu nodes\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count(), graph->nodes().size());

  Tensor image = Tensor::empty({a.batch, 3, size, size}, DType::f32);
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < image.numel(); ++i) image.data<float>()[i] = normal(rng);
  executor.set_input("image", image);
  executor.run();  // warm-up (and CUDA-graph capture on the second run)
  std::vector<double> ms;
  for (int r = 0; r < a.runs; ++r) {
    const auto start = std::chrono::steady_clock::now();
    executor.run();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }

  const std::string oracle = a.oracle ? run_oracle(a, size, threads) : std::string();
  const double ours = median(ms);
  std::printf("\n  %-28s %12s %6s\n", "forward", "median ms", "runs");
  std::printf("  %-28s %12.1f %6d\n", "mfuser graph (fp32)", ours, a.runs);
  if (!oracle.empty()) {
    const double theirs = json_number(oracle, "median_ms");
    std::printf("  %-28s %12.1f %6d\n", "PyTorch oracle (fp32, eager)", theirs, a.runs);
    std::printf("  %-28s %11.2fx\n", "speed-up over PyTorch", theirs / ours);
  }
  const double gib = 1024.0 * 1024 * 1024;
  std::printf("\n  memory: arena %.2f GiB planned by liveness (one buffer per tensor would take %.2f GiB)\n",
              double(executor.plan().arena_bytes) / gib, double(executor.plan().naive_bytes) / gib);
  if (!oracle.empty())
    std::printf("          PyTorch peak RSS %.2f GiB (weights included)\n", json_number(oracle, "peak_rss_bytes") / gib);

  if (a.top > 0) {
    graph::Executor profiled(*graph, device, {.profile = true});
    profiled.set_input("image", image);
    profiled.run();
    std::map<std::string, std::pair<double, int>> by_op;
    double total = 0;
    for (size_t i = 0; i < graph->nodes().size(); ++i) {
      auto& [seconds, count] = by_op[graph->nodes()[i].op];
      seconds += profiled.node_seconds()[i];
      ++count;
      total += profiled.node_seconds()[i];
    }
    std::vector<std::pair<std::string, std::pair<double, int>>> rows(by_op.begin(), by_op.end());
    std::sort(rows.begin(), rows.end(), [](const auto& x, const auto& y) { return x.second.first > y.second.first; });
    std::printf("\n  %-20s %10s %7s %7s   (one profiled run, %.1f ms)\n", "op", "ms", "share", "nodes", total * 1e3);
    for (size_t i = 0; i < rows.size() && int(i) < a.top; ++i)
      std::printf("  %-20s %10.1f %6.1f%% %7d\n", rows[i].first.c_str(), rows[i].second.first * 1e3,
                  100 * rows[i].second.first / total, rows[i].second.second);
  }
  return 0;
}

}  // namespace mfuser::apps
