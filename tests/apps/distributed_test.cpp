// Data-parallel training on the CPU: the socket communicator's collectives (ranks as threads on loopback), the
// launch environment, the data shards, and the equivalence the design rests on: N ranks with batch b reach the
// parameters (and BatchNorm statistics, and losses) of one process with batch N * b, SyncBN included.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <cstring>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "apps/train_data.h"
#include "apps/trainer.h"
#include "graph/model/mfuser.h"
#include "loaders/safetensors.h"
#include "runtime/launch.h"
#include "runtime/nccl_communicator.h"
#include "runtime/parallel.h"
#include "runtime/socket_communicator.h"
#include "tests/common/cuda_test.h"

namespace mfuser {
namespace {

namespace fs = std::filesystem;

// Runs `body(rank, comm)` on `world` threads, each with its own SocketCommunicator of one group on a free
// loopback port. Errors thrown on a rank are collected (rank -> message) instead of escaping the thread.
// The ranks run single-threaded: threads of one process share OpenBLAS's pool and its process-wide thread
// count, which SerialBlasScope changes under the other rank's GEMMs. Measured with 2 threads each: from the
// second step on a different loss every run (up to 16% off); single-threaded: the same bits every run. Real
// ranks are processes (`mfuser train`), each with its own OpenBLAS.
std::map<int, std::string> run_group(int world, const std::function<void(int, Communicator&)>& body,
                                     std::chrono::seconds timeout = std::chrono::seconds(60)) {
  const int threads = num_threads();
  set_num_threads(1);
  const SocketOptions options{"127.0.0.1", free_loopback_port(), timeout};
  std::map<int, std::string> errors;
  std::mutex mu;
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r)
    ranks.emplace_back([&, r] {
      try {
        SocketCommunicator comm(r, world, options);
        body(r, comm);
      } catch (const std::exception& e) {
        const std::lock_guard<std::mutex> lock(mu);
        errors[r] = e.what();
      }
    });
  for (std::thread& t : ranks) t.join();
  set_num_threads(threads);
  return errors;
}

void expect_no_errors(const std::map<int, std::string>& errors) {
  for (const auto& [rank, message] : errors) ADD_FAILURE() << "rank " << rank << ": " << message;
}

// Rank r's values: distinct per rank and element, with fractions that make the summation order visible.
Tensor rank_values(int rank, int64_t n) {
  Tensor t = Tensor::empty({n}, DType::f32);
  for (int64_t i = 0; i < n; ++i) t.data<float>()[i] = float(rank + 1) * 0.1f + float(i) * 1.0e-3f + 1.0f / 3.0f;
  return t;
}

TEST(SocketCommunicator, CollectivesReduceInRankOrder) {
  constexpr int kWorld = 3;
  constexpr int64_t kN = 1000;
  std::vector<Tensor> sums(kWorld), means(kWorld), gathered(kWorld), scattered(kWorld);
  std::vector<std::vector<uint8_t>> broadcast(kWorld);
  expect_no_errors(run_group(kWorld, [&](int rank, Communicator& comm) {
    EXPECT_EQ(comm.rank(), rank);
    EXPECT_EQ(comm.world_size(), kWorld);
    const Tensor mine = rank_values(rank, kN);
    sums[size_t(rank)] = Tensor::empty({kN}, DType::f32);
    comm.all_reduce(mine, sums[size_t(rank)], ReduceOp::sum);
    means[size_t(rank)] = rank_values(rank, kN);  // in place
    comm.all_reduce(means[size_t(rank)], means[size_t(rank)], ReduceOp::mean);
    gathered[size_t(rank)] = Tensor::empty({kWorld, kN}, DType::f32);
    comm.all_gather(mine, gathered[size_t(rank)]);
    const Tensor big = rank_values(rank, kN * kWorld);
    scattered[size_t(rank)] = Tensor::empty({kN}, DType::f32);
    comm.reduce_scatter(big, scattered[size_t(rank)], ReduceOp::sum);
    broadcast[size_t(rank)] = rank == 1 ? std::vector<uint8_t>{7, 8, 9} : std::vector<uint8_t>{};
    comm.broadcast_bytes(broadcast[size_t(rank)], 1);
    comm.barrier();
  }));
  for (int r = 0; r < kWorld; ++r) {
    for (int64_t i = 0; i < kN; ++i) {
      float sum = rank_values(0, kN).data<float>()[i];  // rank order, as the contract says
      for (int q = 1; q < kWorld; ++q) sum += rank_values(q, kN).data<float>()[i];
      ASSERT_EQ(sums[size_t(r)].data<float>()[i], sum) << "rank " << r << " element " << i;
      ASSERT_EQ(means[size_t(r)].data<float>()[i], sum / float(kWorld)) << "rank " << r << " element " << i;
      for (int q = 0; q < kWorld; ++q)
        ASSERT_EQ(gathered[size_t(r)].data<float>()[q * kN + i], rank_values(q, kN).data<float>()[i]);
      float block = rank_values(0, kN * kWorld).data<float>()[r * kN + i];
      for (int q = 1; q < kWorld; ++q) block += rank_values(q, kN * kWorld).data<float>()[r * kN + i];
      ASSERT_EQ(scattered[size_t(r)].data<float>()[i], block) << "rank " << r << " element " << i;
    }
    EXPECT_EQ(broadcast[size_t(r)], (std::vector<uint8_t>{7, 8, 9})) << "rank " << r;
  }
}

TEST(SocketCommunicator, MismatchedCollectivesFailOnEveryRank) {
  const auto errors = run_group(2, [](int rank, Communicator& comm) {
    Tensor t = rank_values(rank, 4);
    if (rank == 0) comm.all_reduce(t, t, ReduceOp::sum);
    else comm.barrier();
  });
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_NE(errors.at(0).find("rank 0 called all_reduce(sum) but rank 1 called barrier"), std::string::npos)
      << errors.at(0);
  EXPECT_NE(errors.at(1).find("rank 0"), std::string::npos) << errors.at(1);
}

TEST(SocketCommunicator, MissingRankTimesOutNamingIt) {
  const SocketOptions options{"127.0.0.1", free_loopback_port(), std::chrono::seconds(1)};
  try {
    SocketCommunicator comm(0, 3, options);  // ranks 1 and 2 never come
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("waited 1 s for 2 of 2 ranks"), std::string::npos) << e.what();
  }
  try {
    SocketCommunicator comm(2, 3, options);  // nobody listens
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("could not connect to rank 0 at 127.0.0.1:"), std::string::npos) << e.what();
  }
}

TEST(LaunchEnv, ReadsTorchrunOpenMpiAndRejectsNonsense) {
  const auto from = [](std::map<std::string, std::string> vars) {
    return launch_env([vars = std::move(vars)](const char* name) -> const char* {
      const auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    });
  };
  const LaunchEnv single = from({});
  EXPECT_EQ(single.world_size, 1);
  EXPECT_FALSE(single.launched());
  const LaunchEnv torchrun = from({{"RANK", "5"}, {"WORLD_SIZE", "16"}, {"LOCAL_RANK", "1"},
                                   {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "23456"}});
  EXPECT_EQ(torchrun.rank, 5);
  EXPECT_EQ(torchrun.world_size, 16);
  EXPECT_EQ(torchrun.local_rank, 1);
  EXPECT_EQ(torchrun.master_addr, "node0");
  EXPECT_EQ(torchrun.master_port, 23456);
  EXPECT_EQ(torchrun.launcher, "torchrun");
  EXPECT_TRUE(torchrun.launched());
  const LaunchEnv mpi = from({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "8"},
                              {"OMPI_COMM_WORLD_LOCAL_RANK", "3"}});
  EXPECT_EQ(mpi.rank, 3);
  EXPECT_EQ(mpi.world_size, 8);
  EXPECT_EQ(mpi.local_rank, 3);
  EXPECT_EQ(mpi.master_addr, "127.0.0.1");
  EXPECT_EQ(mpi.launcher, "Open MPI");
  EXPECT_THROW(from({{"RANK", "8"}, {"WORLD_SIZE", "8"}}), Error);
  EXPECT_THROW(from({{"WORLD_SIZE", "8"}}), Error);
  EXPECT_THROW(from({{"RANK", "x"}, {"WORLD_SIZE", "2"}}), Error);
  EXPECT_THROW(from({{"MASTER_PORT", "70000"}}), Error);
}

// ---- The trainer ----

constexpr int64_t kCrop = 64;

struct TinyModel {
  fs::path dir, weights, config_path;
  model::ModelConfig config;
  TinyModel() {
    const char* src = std::getenv("MFUSER_SOURCE_DIR");
    const fs::path root = src ? fs::path(src) : fs::path(__FILE__).parent_path().parent_path().parent_path();
    dir = fs::temp_directory_path() / str_cat("mfuser_distributed_test_", ::getpid());
    fs::create_directories(dir);
    weights = dir / "model.safetensors";
    config_path = root / "tools/configs/mfuser_clip_tiny.json";
    config = model::ModelConfig::load(config_path.string());
    const model::MfuserModel m(model::WeightStore::synthesize(11), config);
    write_safetensors(weights.string(), m.weights().synthesized());
  }
  ~TinyModel() {
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }
};

const TinyModel& tiny() {
  static const TinyModel m;
  return m;
}

apps::TrainConfig train_config(int64_t batch) {
  apps::TrainConfig c;
  c.batch = batch;
  c.crop = kCrop;
  c.iterations = 3;
  c.warmup = 0;
  c.lr = 1e-3;
  c.seed = 5;
  c.dropout = false;  // N ranks x b equal 1 x N*b only with the same masks, which per-rank streams do not draw
  return c;
}

std::unique_ptr<apps::TrainData> data_for(int rank, int world, int64_t batch) {
  apps::TrainDataOptions o;
  o.dataset = "synthetic";
  o.batch = batch;
  o.crop = kCrop;
  o.seed = 9;
  o.threads = 1;
  o.prefetch = 1;
  o.synthetic_images = 8;
  o.rank = rank;
  o.world_size = world;
  return apps::open_train_data(o);
}

TEST(DataParallel, RankShardsAreSlicesOfTheGlobalBatch) {
  auto whole = data_for(0, 1, 4);
  std::vector<std::unique_ptr<apps::TrainData>> ranks;
  for (int r = 0; r < 2; ++r) ranks.push_back(data_for(r, 2, 2));
  for (int step = 0; step < 3; ++step) {
    const apps::TrainBatch all = whole->next();
    for (int r = 0; r < 2; ++r) {
      const apps::TrainBatch mine = ranks[size_t(r)]->next();
      const Tensor images = all.images.slice_rows(2 * r, 2 * r + 2), labels = all.labels.slice_rows(2 * r, 2 * r + 2);
      ASSERT_EQ(std::memcmp(mine.images.raw_data(), images.raw_data(), images.nbytes()), 0) << "step " << step;
      ASSERT_EQ(std::memcmp(mine.labels.raw_data(), labels.raw_data(), labels.nbytes()), 0) << "step " << step;
    }
  }
}

// What a run leaves to compare: every step's losses and first-step gradients, the final parameters.
struct RunResult {
  std::vector<apps::StepStats> steps;
  std::map<std::string, Tensor> first_grads, params;
};

RunResult train_steps(int rank, int world, int64_t batch, Communicator* comm, bool zero1 = false,
                      const fs::path& save_to = {}, Device device = Device::cpu()) {
  apps::TrainConfig config = train_config(batch);
  config.zero1 = zero1;
  apps::Trainer trainer(tiny().weights.string(), tiny().config, config, device, comm);
  RunResult result;
  trainer.set_gradient_hook([&](std::span<const std::string> names, std::span<Tensor> grads) {
    if (!result.first_grads.empty()) return;
    for (size_t i = 0; i < names.size(); ++i) result.first_grads[names[i]] = grads[i].to(Device::cpu());
  });
  auto data = data_for(rank, world, batch);
  for (int s = 0; s < 3; ++s) result.steps.push_back(trainer.step(data->next()));
  if (!save_to.empty()) trainer.save(save_to.string());
  for (const auto& [name, t] : trainer.state_dict())
    if (t.dtype() == DType::f32 &&
        (model::is_trainable(name) || name.ends_with("running_mean") || name.ends_with("running_var")))
      result.params[name] = t;
  return result;
}

// Relative L2 of a - b against b - baseline (b itself without a baseline), over every element of every tensor
// (a whole-model figure), and the worst single tensor, whose denominator is floored at 1e-4 of the whole's: a
// tensor whose true value is ~0 (a conv bias right before BatchNorm gets no gradient) holds only rounding.
struct Difference {
  double total = 0, worst = 0;
  std::string worst_name;
};

// Elements whose first-step gradient is rounding noise: their true gradient is 0 (a conv bias right before a
// BatchNorm, the key part of an attention's in_proj_bias: softmax ignores a constant shift), and AdamW turns
// noise into full-size updates of random sign, so such parameters are not determined to rounding by any
// two fp32 computations. Noise: |g| below 1e-7 of the whole gradient's norm.
std::map<std::string, std::vector<char>> noise_only(const std::map<std::string, Tensor>& grads, int64_t* count) {
  double all = 0;
  for (const auto& [name, g] : grads)
    for (int64_t i = 0; i < g.numel(); ++i) all += double(g.data<float>()[i]) * g.data<float>()[i];
  all = std::sqrt(all);
  std::map<std::string, std::vector<char>> mask;
  *count = 0;
  for (const auto& [name, g] : grads) {
    std::vector<char>& m = mask[name];
    m.resize(size_t(g.numel()));
    for (int64_t i = 0; i < g.numel(); ++i) {
      const double v = std::abs(g.data<float>()[i]);
      m[size_t(i)] = v > 0 && v < 1e-7 * all;  // exact zeros (dead ReLUs) are the same in both runs
      *count += m[size_t(i)];
    }

  }
  return mask;
}

Difference compare_all(const std::map<std::string, Tensor>& a, const std::map<std::string, Tensor>& b,
                       const std::map<std::string, Tensor>* baseline = nullptr,
                       const std::map<std::string, std::vector<char>>* skip = nullptr) {
  std::map<std::string, std::pair<double, double>> parts;  // name -> (squared difference, squared reference)
  double diff_all = 0, norm_all = 0;
  for (const auto& [name, want] : b) {
    const auto it = a.find(name);
    EXPECT_NE(it, a.end()) << name << " missing";
    if (it == a.end()) continue;
    double diff = 0, norm = 0;
    const std::vector<char>* skipped = skip && skip->contains(name) ? &skip->at(name) : nullptr;
    for (int64_t i = 0; i < want.numel(); ++i) {
      if (skipped && (*skipped)[size_t(i)]) continue;
      const double x = it->second.data<float>()[i], y = want.data<float>()[i];
      const double base = baseline ? double(baseline->at(name).data<float>()[i]) : 0.0;
      diff += (x - y) * (x - y);
      norm += (y - base) * (y - base);
    }
    parts[name] = {diff, norm};
    diff_all += diff;
    norm_all += norm;
  }
  Difference d;
  d.total = std::sqrt(diff_all / norm_all);
  for (const auto& [name, p] : parts) {
    const double rel = std::sqrt(p.first) / std::max(std::sqrt(p.second), 1e-4 * std::sqrt(norm_all));
    if (rel >= d.worst) {
      d.worst = rel;
      d.worst_name = name;
    }
  }
  return d;
}

TEST(DataParallel, TwoRanksEqualOneProcessWithTheirBatch) {
  const RunResult single = train_steps(0, 1, 2, nullptr);
  std::vector<RunResult> ranks(2);
  expect_no_errors(run_group(2, [&](int rank, Communicator& comm) { ranks[size_t(rank)] = train_steps(rank, 2, 1, &comm); },
                             std::chrono::seconds(300)));
  ASSERT_EQ(ranks[0].steps.size(), 3u);
  ASSERT_EQ(ranks[1].steps.size(), 3u);

  // Every rank holds the same parameters, bitwise: same averaged gradients, same optimizer arithmetic.
  for (const auto& [name, t] : ranks[0].params)
    ASSERT_EQ(std::memcmp(t.raw_data(), ranks[1].params.at(name).raw_data(), t.nbytes()), 0) << name;

  // The group's losses are the single process's, step by step. The first step's differ by rounding in the
  // sums only, except where the mask losses' uncertainty sampling chooses another of two candidates whose
  // |logit| tie to rounding (per part <= 1e-4); later steps add the parameters' rounding-level differences.
  for (size_t s = 0; s < 3; ++s) {
    const apps::StepStats &one = single.steps[s], &group = ranks[0].steps[s];
    double worst = 0;
    for (size_t k = 0; k < one.losses.size(); ++k)
      worst = std::max(worst, std::abs(group.losses[k].second - one.losses[k].second) / std::abs(one.losses[k].second));
    std::printf("[ losses   ] step %zu: one process %.7g, two ranks %.7g; worst part rel %.3g\n", s + 1, one.total,
                group.total, worst);
    EXPECT_NEAR(group.total, one.total, (s == 0 ? 1e-5 : 1e-4) * std::abs(one.total)) << "step " << s + 1;
    EXPECT_LE(worst, s == 0 ? 1e-4 : 1e-3) << "step " << s + 1;
  }
  // First-step gradients: the average of the ranks' equals the gradient of the whole batch's loss. The bounds
  // are fp32 rounding through the model's chains: the deepest ones (the first adapters, below the frozen
  // towers) amplify it most, as PyTorch's own fp32 gradients of them are off float64 by 4e-5..4e-3
  // (train_parity_test).
  const Difference grads = compare_all(ranks[0].first_grads, single.first_grads);
  std::printf("[ grads    ] rel L2 over all %zu gradients %.3g; worst tensor %s %.3g\n", single.first_grads.size(),
              grads.total, grads.worst_name.c_str(), grads.worst);
  EXPECT_LE(grads.total, 1e-4);
  EXPECT_LE(grads.worst, 2e-3) << grads.worst_name;
  // After three AdamW steps the parameters (and the SyncBN running statistics) agree to rounding, measured
  // against how far they moved; elements with a noise-only gradient are left out (noise_only).
  int64_t undetermined = 0;
  const auto skip = noise_only(single.first_grads, &undetermined);
  std::map<std::string, Tensor> initial;
  const SafetensorsReader reader(tiny().weights.string());
  for (const auto& [name, t] : single.params) initial[name] = reader.view(name);
  const Difference params = compare_all(ranks[0].params, single.params, &initial, &skip);
  std::printf("[ params   ] rel L2 of the difference over the update %.3g; worst tensor %s %.3g (%lld elements with a "
              "noise-only gradient left out)\n",
              params.total, params.worst_name.c_str(), params.worst, static_cast<long long>(undetermined));
  // Per tensor the bound is looser: a conv right before a GroupNorm (pixel_decoder.input_convs) has directions
  // without gradient inside the tensor, where AdamW amplifies rounding the same way (measured 1.2e-2).
  EXPECT_LE(params.total, 1e-3);
  EXPECT_LE(params.worst, 5e-2) << params.worst_name;
}

// ZeRO-1 shards the AdamW state; the arithmetic per element is the replicated optimizer's, and the socket
// group's reduce-scatter sums in the all-reduce's order: the parameters and the checkpointed state are the
// same, bit for bit.
TEST(DataParallel, ZeroOneEqualsTheReplicatedOptimizerBitwise) {
  const fs::path dir = tiny().dir / "zero1";
  std::map<bool, std::vector<RunResult>> runs;
  for (const bool zero1 : {false, true}) {
    runs[zero1].resize(2);
    expect_no_errors(run_group(2, [&](int rank, Communicator& comm) {
      runs[zero1][size_t(rank)] = train_steps(rank, 2, 1, &comm, zero1, dir / (zero1 ? "sharded" : "replicated"));
    }, std::chrono::seconds(300)));
  }
  EXPECT_TRUE(runs[true][0].first_grads.empty()) << "ZeRO-1 holds no whole gradient: the hook is not called";
  EXPECT_FALSE(runs[false][0].first_grads.empty());
  for (const auto& [name, t] : runs[false][0].params)
    for (int rank = 0; rank < 2; ++rank)
      ASSERT_EQ(std::memcmp(t.raw_data(), runs[true][size_t(rank)].params.at(name).raw_data(), t.nbytes()), 0)
          << name << " on rank " << rank;
  for (size_t s = 0; s < 3; ++s) EXPECT_EQ(runs[true][0].steps[s].total, runs[false][0].steps[s].total);
  const SafetensorsReader sharded((dir / "sharded/iter_3/optimizer.safetensors").string()),
      replicated((dir / "replicated/iter_3/optimizer.safetensors").string());
  ASSERT_EQ(sharded.entries().size(), replicated.entries().size());
  for (const SafetensorsEntry& e : replicated.entries()) {
    const Tensor want = replicated.view(e.name);
    ASSERT_NE(sharded.find(e.name), nullptr) << e.name;
    const Tensor got = sharded.view(e.name);
    ASSERT_EQ(got.shape(), want.shape()) << e.name;
    ASSERT_EQ(std::memcmp(got.raw_data(), want.raw_data(), want.nbytes()), 0) << e.name;
  }
}

// `mfuser train` launched as two processes with torchrun's variables (the CPU ranks meet over loopback) trains
// as one process with both ranks' batch: the same losses, step by step.
TEST(DataParallel, TwoProcessLaunchEqualsOneProcess) {
  const fs::path dir = tiny().dir / "launch";
  fs::create_directories(dir);
  for (const int batch : {1, 2})
    std::ofstream(dir / str_cat("batch", batch, ".json"))
        << R"({"crop": 64, "lr": 1e-3, "warmup": 0, "iterations": 2, "log_every": 1, "seed": 4, "dropout": false, )"
        << R"("batch": )" << batch
        << "}";
  std::ofstream(dir / "config.json") << std::ifstream(tiny().config_path).rdbuf();
  const auto train = [&](const std::string& env, int batch, const std::string& out, const std::string& log) {
    return str_cat(env, " '", MFUSER_CLI_PATH, "' train --weights '", tiny().weights.string(), "' --config '",
                   (dir / "config.json").string(), "' --config-train '",
                   (dir / str_cat("batch", batch, ".json")).string(), "' --threads 1 --data-threads 1 --out '",
                   (dir / out).string(), "' >'",
                   (dir / log).string(), "' 2>&1");
  };
  const int port = free_loopback_port();
  std::ofstream(dir / "launch.sh") << train(str_cat("RANK=0 WORLD_SIZE=2 MASTER_PORT=", port), 1, "two", "rank0.log")
                                   << " &\nfirst=$!\n"
                                   << train(str_cat("RANK=1 WORLD_SIZE=2 MASTER_PORT=", port), 1, "two", "rank1.log")
                                   << " &\nsecond=$!\nwait $first && wait $second\n";
  ASSERT_EQ(std::system(str_cat("bash '", (dir / "launch.sh").string(), "'").c_str()), 0)
      << std::ifstream(dir / "rank0.log").rdbuf() << std::ifstream(dir / "rank1.log").rdbuf();
  ASSERT_EQ(std::system(train("", 2, "one", "one.log").c_str()), 0) << std::ifstream(dir / "one.log").rdbuf();
  const std::string log = (std::stringstream() << std::ifstream(dir / "rank0.log").rdbuf()).str();
  EXPECT_NE(log.find("data parallel over 2 ranks (torchrun, socket"), std::string::npos) << log;
  // Step 1 starts from the same parameters: its loss differs by rounding in the sums. Step 2's parameters
  // differ where AdamW's first, sign-like update amplified rounding (directions without gradient, see
  // noise_only), which the loss does not see; the uncertainty sampling's near-ties stay.
  const auto losses = [&](const std::string& run) {
    std::vector<double> out;
    std::ifstream in(dir / run / "train_log.jsonl");
    for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line).at("loss").get<double>());
    return out;
  };
  const std::vector<double> two = losses("two"), one = losses("one");
  ASSERT_EQ(two.size(), 2u);
  ASSERT_EQ(one.size(), 2u);
  for (size_t s = 0; s < 2; ++s) {
    std::printf("[ losses   ] step %zu: two processes %.7g, one %.7g\n", s + 1, two[s], one[s]);
    EXPECT_NEAR(two[s], one[s], (s == 0 ? 1e-5 : 1e-4) * one[s]) << "step " << s + 1;
  }
  EXPECT_TRUE(fs::exists(dir / "two/iter_2/model.safetensors"));
}

// The NCCL path as one lent GPU can run it: a world of one still builds the data-parallel graph (SyncBN, the
// bucketed overlapped all-reduces on NCCL's own stream, the join), captured as a CUDA graph from the second
// step on; it must train as the plain graph does.
TEST(DataParallelCuda, NcclWorldOfOneTrainsAsOneProcess) {
  MFUSER_REQUIRE_CUDA();
  if (!built_with_nccl()) GTEST_SKIP() << "this build has no NCCL";
  const RunResult plain = train_steps(0, 1, 2, nullptr, false, {}, Device::cuda());
  auto nccl = make_nccl_communicator(std::make_unique<SocketCommunicator>(0, 1), 0);
  const RunResult ddp = train_steps(0, 1, 2, nccl.get(), false, {}, Device::cuda());
  for (size_t s = 0; s < 3; ++s) {
    std::printf("[ losses   ] step %zu: plain %.7g, nccl %.7g\n", s + 1, plain.steps[s].total, ddp.steps[s].total);
    EXPECT_NEAR(ddp.steps[s].total, plain.steps[s].total, 1e-4 * std::abs(plain.steps[s].total));
  }
  // As for two ranks on the CPU: the first gradients to rounding, the parameters after three steps measured
  // against their update with the noise-only elements left out (SyncBN and plain BatchNorm sum in other orders).
  const Difference grads = compare_all(ddp.first_grads, plain.first_grads);
  std::printf("[ grads    ] rel L2 over all gradients %.3g; worst tensor %s %.3g\n", grads.total,
              grads.worst_name.c_str(), grads.worst);
  EXPECT_LE(grads.total, 1e-4);
  int64_t undetermined = 0;
  const auto skip = noise_only(plain.first_grads, &undetermined);
  std::map<std::string, Tensor> initial;
  const SafetensorsReader reader(tiny().weights.string());
  for (const auto& [name, t] : plain.params) initial[name] = reader.view(name);
  const Difference params = compare_all(ddp.params, plain.params, &initial, &skip);
  std::printf("[ params   ] rel L2 of the difference over the update %.3g; worst %s %.3g (%lld noise-only elements "
              "left out)\n",
              params.total, params.worst_name.c_str(), params.worst, static_cast<long long>(undetermined));
  EXPECT_LE(params.total, 1e-3);
}

}  // namespace
}  // namespace mfuser
