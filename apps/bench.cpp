// mfuser bench: times the crop forward of our graph and, in the same run on the same device, the PyTorch
// oracle's on the same weights; prints one table (times, achieved TFLOP/s and MFU, peak memory, speed-up)
// and a per-operator breakdown of ours.
//
// On CUDA it first measures the card's ceilings (a bf16 8192^3 GEMM through our cuBLASLt path, a large
// device-to-device copy): MFU is achieved model FLOP/s over that measured GEMM rate, not the datasheet's.
#include "apps/commands.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "graph/executor.h"
#include "graph/model/mfuser.h"
#include "graph/model/training.h"
#include "kernels/adamw/adamw.h"
#include "kernels/cast/cast.h"
#include "kernels/gemm/gemm.h"
#include "runtime/log.h"
#include "runtime/parallel.h"

namespace mfuser::apps {

namespace {

struct BenchArgs {
  std::string weights, config, device = "cpu";
  std::vector<int> batches;             // default: 1 on the CPU; 1 and 18 (one Cityscapes image) on CUDA
  std::vector<std::string> precisions;  // default: fp32 on the CPU; fp32 and bf16 on CUDA
  int size = 0, threads = 0, runs = 0, oracle_runs = 3, top = 12;
  bool oracle = true;
  bool train = false;  // time a training step (forward + losses + backward) instead of the forward
  bool recompute = false;  // --train: time the step with activation checkpointing
  bool plan_only = false;  // --train: plan the step's memory, run nothing
};

constexpr const char* kBenchUsage =
    "usage: mfuser bench --weights FILE.safetensors [--config CONFIG.json] [--device cpu|cuda]\n"
    "                    [--batch N[,N..]] [--precision fp32|bf16|fp32,bf16] [--size PIXELS] [--threads N]\n"
    "                    [--runs N] [--oracle-runs N] [--top N] [--no-oracle] [--train [--recompute] [--plan-only]]\n"
    "Times the forward of N crops (default: 1 crop on the CPU; 1 and 18 crops, fp32 and bf16, on CUDA) and the\n"
    "PyTorch oracle beside it (fp32 eager; bf16 = autocast). --train times one training step of 2 crops\n"
    "(forward, losses, backward) against PyTorch autograd and prints its planned memory with and without\n"
    "activation checkpointing; --recompute times the step with it; --plan-only builds and plans the step\n"
    "without running anything (no oracle). --config defaults to config.json next to the\n"
    "weights; `mfuser init --config tools/configs/mfuser_clip_vitl_512.json` makes random real-size weights.\n";

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream in(text);
  for (std::string part; std::getline(in, part, ',');) parts.push_back(part);
  return parts;
}

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
    else if (k == "--batch") for (const std::string& b : split_commas(value())) a.batches.push_back(parse_int(k, b, 1));
    else if (k == "--precision") a.precisions = split_commas(value());
    else if (k == "--size") a.size = parse_int(k, value(), 16);
    else if (k == "--threads") a.threads = parse_int(k, value(), 1);
    else if (k == "--runs") a.runs = parse_int(k, value(), 1);
    else if (k == "--oracle-runs") a.oracle_runs = parse_int(k, value(), 1);
    else if (k == "--top") a.top = parse_int(k, value(), 0);
    else if (k == "--no-oracle") a.oracle = false;
    else if (k == "--train") a.train = true;
    else if (k == "--recompute") a.recompute = true;
    else if (k == "--plan-only") a.plan_only = true;
    else MFUSER_CHECK(false, "bench: unknown option '", k, "'\n", kBenchUsage);
  }
  MFUSER_CHECK(!a.weights.empty(), "bench: --weights is required\n", kBenchUsage);
  MFUSER_CHECK(a.train || (!a.recompute && !a.plan_only), "bench: --recompute and --plan-only go with --train");
  MFUSER_CHECK(a.device == "cpu" || a.device == "cuda", "bench: --device must be cpu or cuda");
  const bool cuda = a.device == "cuda";
  if (a.batches.empty()) a.batches = a.train ? std::vector<int>{2} : cuda ? std::vector<int>{1, 18} : std::vector<int>{1};
  if (a.train && a.precisions.empty()) a.precisions = {"fp32"};
  MFUSER_CHECK(!a.train || a.precisions == std::vector<std::string>{"fp32"},
               "bench --train: the backward runs in fp32 (--precision fp32)");
  if (a.precisions.empty()) a.precisions = cuda ? std::vector<std::string>{"fp32", "bf16"} : std::vector<std::string>{"fp32"};
  for (const std::string& p : a.precisions) {
    MFUSER_CHECK(p == "fp32" || p == "bf16", "bench: --precision takes fp32 and/or bf16, got '", p, "'");
    MFUSER_CHECK(p == "fp32" || cuda, "bench: bf16 runs on CUDA only (add --device cuda)");
  }
  if (a.runs == 0) a.runs = cuda ? 10 : 3;
  if (a.config.empty()) a.config = (std::filesystem::path(a.weights).parent_path() / "config.json").string();
  return a;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double backward_flops(const graph::Graph& g, const graph::Node& n);

// Multiply-add FLOPs of the matrix work of one node (linear, matmul, attention, convolutions, and their
// backward nodes); the element-wise ops are bandwidth, not FLOPs, and are left out as MFU conventions do.
double node_flops(const graph::Graph& g, const graph::Node& n) {
  if (n.op.ends_with("_backward")) return backward_flops(g, n);
  const auto shape = [&](size_t i) { return g.value(n.inputs[i]).shape; };
  const Shape out = g.value(n.outputs[0]).shape;
  if (n.op == "linear") return 2.0 * double(out.numel()) * double(shape(1)[1]);
  if (n.op == "matmul") return 2.0 * double(out.numel()) * double(shape(0)[-1]);
  if (n.op == "attention") return 4.0 * double(shape(0).numel()) * double(shape(1)[-2]);  // q k^T and p v
  if (n.op == "conv2d") {
    const Shape w = shape(1);
    return 2.0 * double(out.numel()) * double(w[1] * w[2] * w[3]);
  }
  if (n.op == "conv_transpose2d") {
    const Shape w = shape(1);
    return 2.0 * double(shape(0).numel()) * double(w[1] * w[2] * w[3]);
  }
  return 0;
}

// A backward node is named after its forward value ("<value>.grad..."). Each gradient of one of the forward
// node's two matrix operands (x and the weight of a linear or convolution, both sides of a matmul) is one
// product of the forward's size; attention's backward recomputes the scores and makes four products, 2.5
// forwards. The rest (norms, element-wise, bias sums) is bandwidth.
double backward_flops(const graph::Graph& g, const graph::Node& n) {
  const graph::ValueId forward_value = g.find(n.name.substr(0, n.name.rfind(".grad")));
  if (forward_value == graph::kNoValue || g.value(forward_value).producer < 0) return 0;
  const graph::Node& forward = g.nodes()[size_t(g.value(forward_value).producer)];
  const double once = node_flops(g, forward);
  if (n.op == "attention_backward") return 2.5 * once;
  int products = 0;
  for (const graph::ValueId grad : n.outputs)
    for (size_t operand = 0; operand < std::min<size_t>(2, forward.inputs.size()); ++operand)
      if (g.value(grad).shape == g.value(forward.inputs[operand]).shape) {
        ++products;
        break;
      }
  return products * once;
}

double graph_flops(const graph::Graph& g) {
  double total = 0;
  for (const graph::Node& n : g.nodes()) total += node_flops(g, n);
  return total;
}

// A device tensor of uniform values in [-1, 1) in `dtype` (drawn on the host: never time on zeros).
Tensor random_device(const Shape& shape, DType dtype, Device device, uint64_t seed) {
  Tensor host = Tensor::empty(shape, DType::f32);
  float* p = host.data<float>();
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < host.numel(); ++i) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    p[i] = float(s >> 40) / float(1 << 23) - 1.f;
  }
  return kernels::cast_to(host.to(device), dtype);
}

struct Ceilings {
  double gemm_tflops = 0;  // bf16 8192^3 through kernels::gemm (cuBLASLt)
  double copy_tbps = 0;    // device-to-device copy, bytes read + written
};

Ceilings measure_ceilings(Device device) {
  Ceilings c;
  const int64_t n = 8192;
  const Tensor a = random_device({n, n}, DType::bf16, device, 1), b = random_device({n, n}, DType::bf16, device, 2);
  Tensor out = Tensor::empty({n, n}, DType::bf16, device);
  kernels::GemmParams p;
  p.m = p.n = p.k = n;
  std::vector<double> s;
  for (int r = 0; r < 13; ++r) {
    const auto start = std::chrono::steady_clock::now();
    kernels::gemm(a, b, out, p);
    cuda::synchronize(device.index);
    if (r >= 3) s.push_back(seconds_since(start));
  }
  c.gemm_tflops = 2.0 * double(n * n * n) / median(s) / 1e12;

  const int64_t bytes = int64_t(2) << 30;
  const Tensor src = Tensor::empty({bytes}, DType::u8, device);
  Tensor dst = Tensor::empty({bytes}, DType::u8, device);
  s.clear();
  for (int r = 0; r < 8; ++r) {
    const auto start = std::chrono::steady_clock::now();
    dst.copy_from(src);
    cuda::synchronize(device.index);
    if (r >= 2) s.push_back(seconds_since(start));
  }
  c.copy_tbps = 2.0 * double(bytes) / median(s) / 1e12;
  return c;
}

struct Measured {
  int batch = 0;
  std::string precision;
  double median_ms = 0, flops = 0;
  size_t peak_bytes = 0;  // CUDA: allocator high-water mark (weights + arena + workspaces)
  size_t arena_bytes = 0, naive_bytes = 0;
};

// A normalized-image-like input: standard normal values, the same for every run.
Tensor random_image(int batch, int size) {
  Tensor image = Tensor::empty({batch, 3, size, size}, DType::f32);
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < image.numel(); ++i) image.data<float>()[i] = normal(rng);
  return image;
}

// Two warm-up runs (library handles and workspaces; on CUDA the second run is captured as a graph), then the
// median of `runs` timed runs, with the graph's FLOPs and the memory it took.
Measured measure(const graph::Graph& graph, graph::Executor& executor, Device device, int runs, int batch,
                 const std::string& precision) {
  executor.run();
  executor.run();
  std::vector<double> ms;
  for (int r = 0; r < runs; ++r) {
    const auto start = std::chrono::steady_clock::now();
    executor.run();
    ms.push_back(seconds_since(start) * 1e3);
  }
  Measured m;
  m.batch = batch;
  m.precision = precision;
  m.median_ms = median(ms);
  m.flops = graph_flops(graph);
  m.peak_bytes = device.is_cuda() ? cuda::memory_stats(device.index).peak : 0;
  m.arena_bytes = executor.plan().arena_bytes;
  m.naive_bytes = executor.plan().naive_bytes;
  return m;
}

Measured time_ours(model::MfuserModel& model, const BenchArgs& a, Device device, int batch, int size,
                   const std::string& precision) {
  if (device.is_cuda()) cuda::reset_peak(device.index);
  auto graph = model.build(batch, size, size, precision == "bf16" ? DType::bf16 : DType::f32);
  graph::Executor executor(*graph, device);
  executor.set_input("image", random_image(batch, size));
  return measure(*graph, executor, device, a.runs, batch, precision);
}

// Runs tools/reference/bench_oracle.py for every batch and precision in one process; its JSON (null on
// failure, with a warning).
nlohmann::json run_oracle(const BenchArgs& a, int size, int threads) {
  const char* env_python = std::getenv("MFUSER_TORCH_PYTHON");
  const std::string python = env_python ? env_python : MFUSER_TORCH_PYTHON;
  if (python.empty()) {
    log::warn("bench: no Python with PyTorch known to this build (set MFUSER_TORCH_PYTHON): oracle skipped");
    return nullptr;
  }
  std::string batches, precisions;
  for (int b : a.batches) batches += (batches.empty() ? "" : ",") + std::to_string(b);
  for (const std::string& p : a.precisions) precisions += (precisions.empty() ? "" : ",") + p;
  const std::string script = std::string(MFUSER_SOURCE_DIR) + "/tools/reference/bench_oracle.py";
  const std::string cmd = str_cat("'", python, "' '", script, "' --weights '", a.weights, "' --config '", a.config,
                                  "' --batches ", batches, " --precisions ", precisions, " --size ", size,
                                  " --threads ", threads, " --runs ", a.oracle_runs, " --device ", a.device,
                                  a.train ? " --train" : "", " 2>&1");
  std::printf("  running the PyTorch oracle: %s\n", cmd.c_str());
  std::fflush(stdout);
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(cmd.c_str(), "r"), pclose);
  if (!pipe) return nullptr;
  std::string out, last;
  std::array<char, 1 << 14> buf;
  while (fgets(buf.data(), int(buf.size()), pipe.get())) {
    out += buf.data();
    last = buf.data();
  }
  try {
    return nlohmann::json::parse(last);
  } catch (const std::exception&) {
    log::warn("bench: the PyTorch oracle failed:\n", out);
    return nullptr;
  }
}

const nlohmann::json* oracle_result(const nlohmann::json& oracle, int batch, const std::string& precision) {
  if (oracle.is_null()) return nullptr;
  for (const auto& r : oracle["results"])
    if (r["batch"] == batch && r["precision"] == precision) return &r;
  return nullptr;
}

// One run synchronized after every node, its time summed per op kind, the `top` largest printed.
void print_breakdown(const graph::Graph& graph, Device device, const std::function<void(graph::Executor&)>& bind,
                     const std::string& what, int top) {
  graph::Executor profiled(graph, device, {.profile = true});
  bind(profiled);
  profiled.run();  // warm-up (library workspaces)
  profiled.run();
  std::map<std::string, std::array<double, 3>> by_op;  // seconds, nodes, flops
  double total = 0;
  for (size_t i = 0; i < graph.nodes().size(); ++i) {
    auto& [seconds, count, flops] = by_op[graph.nodes()[i].op];
    seconds += profiled.node_seconds()[i];
    count += 1;
    flops += node_flops(graph, graph.nodes()[i]);
    total += profiled.node_seconds()[i];
  }
  std::vector<std::pair<std::string, std::array<double, 3>>> rows(by_op.begin(), by_op.end());
  std::sort(rows.begin(), rows.end(), [](const auto& x, const auto& y) { return x.second[0] > y.second[0]; });
  std::printf("\n  per-op time of ours, %s (one run synchronized after every node: %.1f ms in all)\n", what.c_str(),
              total * 1e3);
  std::printf("  %-24s %10s %7s %7s %9s\n", "op", "ms", "share", "nodes", "TFLOP/s");
  for (size_t i = 0; i < rows.size() && int(i) < top; ++i) {
    const auto& [seconds, count, flops] = rows[i].second;
    std::printf("  %-24s %10.2f %6.1f%% %7d", rows[i].first.c_str(), seconds * 1e3, 100 * seconds / total, int(count));
    if (flops > 0) std::printf(" %9.1f", flops / seconds / 1e12);
    std::printf("\n");
  }
}

// Uniform [0, 1) host values (the mask losses' point draws), a fixed stream.
Tensor uniform_host(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape, DType::f32);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = u(rng);
  return t;
}

// Blocky label maps (8x8-pixel regions) over all classes, as the golden data's.
Tensor random_labels(int batch, int size, int classes) {
  Tensor t = Tensor::empty({batch, size, size}, DType::i64);
  std::mt19937 rng(1);
  const int cells = std::max(1, size / 8);
  std::vector<int64_t> coarse(size_t(batch * cells * cells));
  for (int64_t& c : coarse) c = int64_t(rng() % uint32_t(classes));
  for (int n = 0; n < batch; ++n)
    for (int y = 0; y < size; ++y)
      for (int x = 0; x < size; ++x)
        t.data<int64_t>()[(int64_t(n) * size + y) * size + x] =
            coarse[size_t((n * cells + std::min(cells - 1, y * cells / size)) * cells + std::min(cells - 1, x * cells / size))];
  return t;
}

void bind_training_inputs(graph::Executor& ex, const model::TrainingGraph& t, const model::ModelConfig& config,
                          int batch, int size) {
  ex.set_input("image", random_image(batch, size));
  ex.set_input("gt_semantic_seg", random_labels(batch, size, int(config.num_classes)));
  model::set_dropout_seed(ex, t, 1);
  for (int i = 0; i < t.predictions; ++i)
    for (const char* kind : {"candidates", "randoms"}) {
      const std::string name = str_cat("points.", kind, ".", i);
      ex.set_input(name, uniform_host(t.graph->value(t.graph->at(name)).shape, uint64_t(i)));
    }
}

Measured time_training_step(const model::TrainingGraph& t, const model::ModelConfig& config, const BenchArgs& a,
                            Device device, int batch, int size) {
  if (device.is_cuda()) cuda::reset_peak(device.index);
  graph::Executor executor(*t.graph, device);
  bind_training_inputs(executor, t, config, batch, size);
  const Measured m = measure(*t.graph, executor, device, a.runs, batch, "fp32");
  std::printf("  training graph: %zu nodes, %zu trainable parameters, loss %.4f\n", t.graph->nodes().size(),
              t.parameters.size(), double(executor.get("loss.total").to(Device::cpu()).data<float>()[0]));
  return m;
}

// The planned memory of one training step: the arena of every intermediate (the gradients are graph outputs
// in it), the weights and constants bound to the graph, and AdamW's two f32 moments per updated parameter;
// and, per module, the forward activations still alive when the backward starts (kept for it). Also the
// step's matrix FLOPs, the price of recomputation.
struct TrainingMemory {
  int batch = 0;
  bool recompute = false;
  double flops = 0;
  size_t arena = 0, gradients = 0, weights = 0, constants = 0, optimizer = 0;
  std::map<std::string, size_t> kept;  // module -> bytes
  size_t total() const { return arena + weights + constants + optimizer; }
};

// The module an activation belongs to, by its name.
std::string module_of(const std::string& value) {
  const std::pair<const char*, const char*> modules[] = {
      {"backbone.transformer.", "CLIP visual blocks"}, {"backbone.dinov2.blocks.", "DINOv2 blocks"},
      {"backbone.adapter", "adapters, layer outputs"}, {"backbone.fusion.", "adapters, layer outputs"},
      {"backbone.", "backbone rest (embed, FPN)"},     {"text_encoder.", "text encoder"},
      {"context_decoder.", "context decoder"},         {"text_embeddings", "context decoder"},
      {"decode_head.", "decode head"}};
  for (const auto& [prefix, module] : modules)
    if (value.starts_with(prefix)) return module;
  return "losses";
}

TrainingMemory plan_training_memory(const model::TrainingGraph& t, int batch, bool recompute) {
  const graph::Graph& g = *t.graph;
  const graph::MemoryPlan plan = graph::plan_memory(g);
  TrainingMemory m;
  m.batch = batch;
  m.recompute = recompute;
  m.flops = graph_flops(g);
  m.arena = plan.arena_bytes;
  for (graph::ValueId id = 0; id < graph::ValueId(g.values().size()); ++id) {
    const graph::Value& v = g.value(id);
    if (v.alias_of != graph::kNoValue) continue;
    if (v.kind == graph::ValueKind::weight) m.weights += v.nbytes();
    if (v.kind == graph::ValueKind::constant) m.constants += v.nbytes();
    const bool forward = v.producer >= 0 && size_t(v.producer) < t.forward_nodes;
    if (v.kind == graph::ValueKind::intermediate && forward && size_t(plan.last_node[size_t(id)]) >= t.forward_nodes &&
        !g.is_output(id))
      m.kept[module_of(v.name)] += v.nbytes();
  }
  for (const graph::ValueId p : t.parameters) {
    const graph::Value& param = g.value(p);
    const graph::ValueId grad = g.find("grad." + param.name);
    if (grad == graph::kNoValue) continue;
    m.gradients += g.value(grad).nbytes();
    if (kernels::param_group_rule(param.name).lr_mult != 0) m.optimizer += 2 * size_t(param.shape.numel()) * 4;
  }
  return m;
}

void print_training_memory(const std::vector<TrainingMemory>& rows) {
  const double gib = 1024.0 * 1024 * 1024;
  std::printf("\n  planned memory of a training step, GiB (fp32; arena: every activation, kept or recomputed, and\n"
              "  the gradients; AdamW: two moments per updated parameter; CUDA adds kernel workspaces; GFLOP: the\n"
              "  matrix work of the forward, the recomputation and the backward)\n");
  std::printf("  %5s %10s | %8s %9s %8s %10s %7s | %7s | %7s\n", "crops", "recompute", "arena", "of grads",
              "weights", "constants", "AdamW", "total", "GFLOP");
  for (const TrainingMemory& m : rows)
    std::printf("  %5d %10s | %8.2f %9.2f %8.2f %10.2f %7.2f | %7.2f | %7.0f\n", m.batch, m.recompute ? "yes" : "no",
                double(m.arena) / gib, double(m.gradients) / gib, double(m.weights) / gib, double(m.constants) / gib,
                double(m.optimizer) / gib, double(m.total()) / gib, m.flops / 1e9);
  std::printf("\n  forward activations kept for the backward (alive when it starts), GiB\n  %-28s", "module");
  std::map<std::string, std::vector<size_t>> by_module;
  for (size_t r = 0; r < rows.size(); ++r) {
    std::printf(" %5d/%-3s", rows[r].batch, rows[r].recompute ? "yes" : "no");
    for (const auto& [module, bytes] : rows[r].kept) {
      by_module[module].resize(rows.size());
      by_module[module][r] = bytes;
    }
  }
  std::printf("\n");
  for (auto& [module, bytes] : by_module) {
    bytes.resize(rows.size());
    std::printf("  %-28s", module.c_str());
    for (const size_t b : bytes) std::printf(" %9.3f", double(b) / gib);
    std::printf("\n");
  }
}

// bench --train: one training step of ours (forward, losses, backward: the gradients of every trainable
// parameter) beside PyTorch autograd's on the same weights and device, and the step's planned memory with and
// without activation checkpointing (the other setting's graph is built and planned only).
int bench_train(const BenchArgs& a, const model::ModelConfig& config, int size, int threads, Device device) {
  model::WeightStore weights(a.weights);
  const double gib = 1024.0 * 1024 * 1024;
  std::vector<Measured> ours;
  std::vector<TrainingMemory> memory;
  model::TrainingGraph first;  // the first batch's timed graph, profiled again for the breakdown
  for (int batch : a.batches)
    for (const bool recompute : {false, true}) {
      model::TrainingGraph t =
          model::build_training_graph(weights, config, batch, size, size, {.recompute = recompute});
      memory.push_back(plan_training_memory(t, batch, recompute));
      if (a.plan_only || recompute != a.recompute) continue;
      ours.push_back(time_training_step(t, config, a, device, batch, size));
      if (!first.graph) first = std::move(t);
      std::printf("  ours: training step of %d crop(s)%s: %.1f ms\n", batch, recompute ? " (recompute)" : "",
                  ours.back().median_ms);
      std::fflush(stdout);
    }
  print_training_memory(memory);
  if (a.plan_only) return 0;
  const nlohmann::json oracle = a.oracle ? run_oracle(a, size, threads) : nlohmann::json();
  std::printf("\n  %5s | %10s %8s %10s %10s | %11s %9s | %8s\n", "crops", "step ms", "TFLOP/s", "arena GiB",
              "peak GiB", "PyTorch ms", "peak GiB", "speed-up");
  for (const Measured& m : ours) {
    std::printf("  %5d | %10.1f %8.2f %10.2f ", m.batch, m.median_ms, m.flops / (m.median_ms * 1e-3) / 1e12,
                double(m.arena_bytes) / gib);
    if (device.is_cuda()) std::printf("%10.2f", double(m.peak_bytes) / gib);
    else std::printf("%10s", "-");
    if (const nlohmann::json* r = oracle_result(oracle, m.batch, "fp32")) {
      const double theirs = (*r)["median_ms"].get<double>();
      const double peak = device.is_cuda() ? (*r)["peak_cuda_bytes"].get<double>() : oracle["peak_rss_bytes"].get<double>();
      std::printf(" | %11.1f %9.2f | %7.2fx\n", theirs, peak / gib, theirs / m.median_ms);
    } else {
      std::printf(" | %11s %9s | %8s\n", "-", "-", "-");
    }
  }
  std::printf("  FLOPs counted: the matrix work of the forward and backward nodes (%.1f GFLOP per step of %d%s)\n",
              ours.front().flops / 1e9, ours.front().batch, a.recompute ? ", recomputation included" : "");
  std::printf("  memory: ours = the planned activation arena (forward values the backward reads stay in it);\n"
              "  PyTorch = %s (weights included)\n", device.is_cuda() ? "max_memory_allocated" : "peak RSS");
  std::printf("  ours runs upstream's training-mode dropout and DropPath (as mfuser train); the oracle has none\n");
  if (a.top > 0) {
    const int batch = a.batches.front();
    print_breakdown(*first.graph, device,
                    [&](graph::Executor& ex) { bind_training_inputs(ex, first, config, batch, size); },
                    str_cat("training step of ", batch, " crop(s)"), a.top);
  }
  return 0;
}

}  // namespace

int bench(const std::vector<std::string>& args) {
  const BenchArgs a = parse(args);
  const model::ModelConfig config = model::ModelConfig::load(a.config);
  const int size = a.size ? a.size : config.image_size;
  const int threads = a.threads ? a.threads : num_threads();
  set_num_threads(threads);
  const Device device = a.device == "cuda" ? Device::cuda() : Device::cpu();
  MFUSER_CHECK(device.is_cpu() || cuda::available(), "bench --device cuda: ", cuda::unavailable_reason());
  if (a.train) {
    std::printf("mfuser bench --train: %s\n  training step, crops of 3 x %d x %d on %s, %d CPU threads, median of %d "
                "runs (oracle: %d)\n",
                config.description.c_str(), size, size, device.str().c_str(), threads, a.runs, a.oracle_runs);
    return bench_train(a, config, size, threads, device);
  }

  std::printf("mfuser bench: %s\n  crops of 3 x %d x %d on %s%s, %d CPU threads, median of %d runs (oracle: %d)\n",
              config.description.c_str(), size, size, device.str().c_str(),
              device.is_cuda() ? (" (" + cuda::device_info(device.index).name + ")").c_str() : "", threads, a.runs,
              a.oracle_runs);
  const auto load_start = std::chrono::steady_clock::now();
  model::MfuserModel model(a.weights, config);
  std::printf("  weights loaded in %.1f s\n", seconds_since(load_start));
  Ceilings ceilings;
  if (device.is_cuda()) {
    ceilings = measure_ceilings(device);
    std::printf("  measured ceilings: bf16 GEMM 8192^3 %.0f TFLOP/s, device copy %.2f TB/s (read + write)\n",
                ceilings.gemm_tflops, ceilings.copy_tbps);
  }
  std::fflush(stdout);

  std::vector<Measured> ours;
  for (int batch : a.batches)
    for (const std::string& precision : a.precisions) {
      ours.push_back(time_ours(model, a, device, batch, size, precision));
      std::printf("  ours: %d crop(s) %s: %.2f ms\n", batch, precision.c_str(), ours.back().median_ms);
      std::fflush(stdout);
    }
  const nlohmann::json oracle = a.oracle ? run_oracle(a, size, threads) : nlohmann::json();

  const double gib = 1024.0 * 1024 * 1024;
  std::printf("\n  %5s %-5s | %9s %8s %6s %8s | %11s %8s | %8s\n", "crops", "prec", "ours ms", "TFLOP/s", "MFU",
              "peak GiB", "PyTorch ms", "peak GiB", "speed-up");
  for (const Measured& m : ours) {
    const double tflops = m.flops / (m.median_ms * 1e-3) / 1e12;
    std::printf("  %5d %-5s | %9.2f %8.1f ", m.batch, m.precision.c_str(), m.median_ms, tflops);
    if (ceilings.gemm_tflops > 0) std::printf("%5.1f%% %8.2f", 100 * tflops / ceilings.gemm_tflops, double(m.peak_bytes) / gib);
    else std::printf("%6s %8s", "-", "-");
    if (const nlohmann::json* r = oracle_result(oracle, m.batch, m.precision)) {
      const double theirs = (*r)["median_ms"].get<double>();
      std::printf(" | %11.2f %8.2f | %7.2fx\n", theirs, (*r)["peak_cuda_bytes"].get<double>() / gib, theirs / m.median_ms);
    } else {
      std::printf(" | %11s %8s | %8s\n", "-", "-", "-");
    }
  }
  std::printf("  model FLOPs per crop (matrix work): %.1f GFLOP\n", ours.front().flops / ours.front().batch / 1e9);
  for (const Measured& m : ours) {
    if (m.precision != "bf16") continue;
    const nlohmann::json* fp32 = oracle_result(oracle, m.batch, "fp32");
    const nlohmann::json* bf16 = oracle_result(oracle, m.batch, "bf16");
    if (fp32 && bf16)
      std::printf("  ours bf16, %d crop(s): %.2fx PyTorch fp32 eager, %.2fx PyTorch bf16 autocast\n", m.batch,
                  (*fp32)["median_ms"].get<double>() / m.median_ms, (*bf16)["median_ms"].get<double>() / m.median_ms);
  }
  if (!oracle.is_null())
    std::printf("  PyTorch %s: fp32 = eager, bf16 = autocast; attention %s; scan: %s\n",
                oracle["torch"].get<std::string>().c_str(), oracle["attention"].get<std::string>().c_str(),
                oracle["scan"].get<std::string>().c_str());
  std::printf("  activation arena of %d crop(s): %.2f GiB planned by liveness (one buffer per tensor: %.2f GiB)\n",
              ours.front().batch, double(ours.front().arena_bytes) / gib, double(ours.front().naive_bytes) / gib);
  if (!oracle.is_null() && device.is_cpu())
    std::printf("  PyTorch peak RSS %.2f GiB (weights included)\n", oracle["peak_rss_bytes"].get<double>() / gib);

  if (a.top > 0) {
    const int batch = a.batches.front();
    const std::string& precision = a.precisions.back();
    auto graph = model.build(batch, size, size, precision == "bf16" ? DType::bf16 : DType::f32);
    print_breakdown(*graph, device, [&](graph::Executor& ex) { ex.set_input("image", random_image(batch, size)); },
                    str_cat(batch, " crop(s) ", precision), a.top);
  }
  return 0;
}

}  // namespace mfuser::apps
