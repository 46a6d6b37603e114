// mfuser train: fine-tunes MFuser-CLIP (apps/trainer.h): one process on one device, or one process per device
// of a data-parallel group launched by torchrun-style variables, mpirun or srun (runtime/launch.h).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "apps/commands.h"
#include "apps/progress.h"
#include "apps/train_data.h"
#include "apps/trainer.h"
#include "loaders/safetensors.h"
#include "runtime/launch.h"
#include "runtime/nccl_communicator.h"
#include "runtime/parallel.h"
#include "runtime/socket_communicator.h"

namespace mfuser::apps {

namespace {

constexpr const char* kTrainUsage =
    "usage: mfuser train --weights FILE.safetensors --out DIR [--config CONFIG.json] [--config-train TRAIN.json]\n"
    "                    [--data synthetic|cityscapes|gta|...] [--root DIR] [--iterations N] [--save-every N]\n"
    "                    [--log-every N] [--resume DIR] [--device cpu|cuda] [--threads N] [--data-threads N]\n"
    "                    [--recompute] [--zero1]\n"
    "--weights: the initial model (e.g. from `mfuser init`, or a converted checkpoint); --config defaults to\n"
    "config.json next to it. --config-train: JSON, every key optional, official values as defaults:\n"
    "  {\"lr\": 1e-4, \"weight_decay\": 1e-4, \"betas\": [0.9, 0.999], \"eps\": 1e-8, \"iterations\": 20000,\n"
    "   \"warmup\": 1500, \"warmup_ratio\": 1e-6, \"power\": 0.9, \"min_lr\": 1e-6, \"batch\": 2, \"crop\": 512,\n"
    "   \"save_every\": 2000, \"log_every\": 10, \"seed\": 0, \"dataset\": \"synthetic\", \"root\": \"\",\n"
    "   \"recompute\": false, \"zero1\": false, \"dropout\": true, \"resize_ratio\": [0.5, 2.0], \"photometric\": true,\n"
    "   \"rare_class_sampling\": {\"temperature\": 100, \"min_pixels\": 3000, \"min_crop_ratio\": 0.5}}\n"
    "   (rare_class_sampling: MFuser's values by default, off (null) by default on the synthetic data set)\n"
    "--recompute: activation checkpointing, each encoder layer's activations recomputed in the backward\n"
    "instead of kept (less memory, about one more forward of the encoders per step).\n"
    "The command-line options override the file. Writes DIR/iter_<step>/{model,optimizer}.safetensors and\n"
    "config.json (model.safetensors loads in `mfuser segment`), DIR/latest, and DIR/train_log.jsonl.\n"
    "--resume DIR (an output folder or a checkpoint folder): continues from its last checkpoint with its\n"
    "training config (unless --config-train is given), exactly as if the run had not stopped; --out defaults\n"
    "to the output folder resumed. A non-finite loss stops the run (exit 1), keeping the last checkpoint.\n"
    "Data parallel: start one process per device with torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK,\n"
    "MASTER_ADDR, MASTER_PORT), `mpirun -np N` (Open MPI / MPICH) or srun; each rank takes `batch` crops, GPU\n"
    "LOCAL_RANK, NCCL (CPU: sockets), SyncBN; rank 0 writes. --zero1: the AdamW state sharded over the ranks\n"
    "(ZeRO-1). See docs/TRAINING.md.\n";

std::string duration_text(double seconds) {
  const auto s = int64_t(seconds + 0.5);
  if (s >= 3600) return str_cat(s / 3600, "h", (s % 3600) / 60, "m");
  if (s >= 60) return str_cat(s / 60, "m", s % 60, "s");
  return str_cat(s, "s");
}

}  // namespace

int train(const std::vector<std::string>& args) {
  namespace fs = std::filesystem;
  std::string weights, config, config_train, data, root, out, resume, device = "cpu";
  std::optional<int> iterations, save_every, log_every;
  int threads = 0, data_threads = 4;
  bool recompute = false, zero1 = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& k = args[i];
    const auto value = [&]() -> const std::string& {
      MFUSER_CHECK(i + 1 < args.size(), "train: ", k, " needs a value");
      return args[++i];
    };
    if (k == "--help" || k == "-h") {
      std::fputs(kTrainUsage, stdout);
      return 0;
    }
    if (k == "--weights") weights = value();
    else if (k == "--config") config = value();
    else if (k == "--config-train") config_train = value();
    else if (k == "--data") data = value();
    else if (k == "--root") root = value();
    else if (k == "--out") out = value();
    else if (k == "--resume") resume = value();
    else if (k == "--device") device = value();
    else if (k == "--iterations") iterations = parse_int(k, value(), 1);
    else if (k == "--save-every") save_every = parse_int(k, value(), 0);
    else if (k == "--log-every") log_every = parse_int(k, value(), 1);
    else if (k == "--threads") threads = parse_int(k, value(), 1);
    else if (k == "--data-threads") data_threads = parse_int(k, value(), 1);
    else if (k == "--recompute") recompute = true;
    else if (k == "--zero1") zero1 = true;
    else MFUSER_CHECK(false, "train: unknown option '", k, "'\n", kTrainUsage);
  }
  MFUSER_CHECK(device == "cpu" || device == "cuda", "--device must be cpu or cuda, got '", device, "'");
  if (threads > 0) set_num_threads(threads);
  // A multi-process launch: the ranks meet at MASTER_ADDR:MASTER_PORT; CUDA ranks then talk NCCL on GPU
  // LOCAL_RANK, CPU ranks over the sockets. Only rank 0 prints progress and writes files.
  const LaunchEnv launch = launch_env();
  std::unique_ptr<Communicator> comm;
  if (launch.launched()) {
    auto group = std::make_unique<SocketCommunicator>(
        launch.rank, launch.world_size, SocketOptions{launch.master_addr, launch.master_port});
    comm = device == "cuda" ? make_nccl_communicator(std::move(group), launch.local_rank) : std::move(group);
  }
  const bool speaker = launch.rank == 0;

  TrainRunOptions o;
  std::string checkpoint;
  if (!resume.empty()) {
    checkpoint = resolve_checkpoint(resume);
    if (out.empty()) out = fs::exists(fs::path(resume) / "model.safetensors") ? fs::path(checkpoint).parent_path().string() : resume;
  } else {
    MFUSER_CHECK(!weights.empty(), "train: --weights is required (or --resume)\n", kTrainUsage);
    MFUSER_CHECK(fs::is_regular_file(weights), "weights file '", weights, "' does not exist");
  }
  MFUSER_CHECK(!out.empty(), "train: --out is required\n", kTrainUsage);
  if (config.empty()) {
    const fs::path beside = fs::path(checkpoint.empty() ? weights : checkpoint + "/model.safetensors").parent_path();
    config = (beside / "config.json").string();
    MFUSER_CHECK(fs::is_regular_file(config), "config file '", config,
                 "' does not exist (the default: config.json next to the weights; pass --config)");
  }
  MFUSER_CHECK(fs::is_regular_file(config), "config file '", config, "' does not exist");
  o.model_config = model::ModelConfig::load(config);
  o.model_config_path = config;
  o.config = !config_train.empty() ? TrainConfig::load(config_train)
             : !checkpoint.empty() ? checkpoint_config(checkpoint)
                                   : TrainConfig{};
  if (iterations) o.config.iterations = *iterations;
  if (save_every) o.config.save_every = *save_every;
  if (log_every) o.config.log_every = *log_every;
  if (!data.empty()) o.config.dataset = data;
  if (!root.empty()) o.config.root = root;
  if (recompute) o.config.recompute = true;
  if (zero1) o.config.zero1 = true;
  o.config.validate("training config (with the command-line options)");
  o.weights = weights;
  o.out_dir = out;
  o.resume = checkpoint;
  o.device = device == "cuda" ? Device::cuda(launch.local_rank) : Device::cpu();
  o.comm = comm.get();

  TrainDataOptions d;
  d.dataset = o.config.dataset;
  d.root = o.config.root;
  d.batch = o.config.batch;
  d.crop = o.config.crop;
  d.seed = o.config.seed;
  d.ratio_min = o.config.resize_ratio_min;
  d.ratio_max = o.config.resize_ratio_max;
  d.photometric = o.config.photometric;
  d.rare_class_sampling = o.config.effective_rare_class_sampling();
  d.threads = data_threads;
  d.rank = launch.rank;
  d.world_size = launch.world_size;
  if (!checkpoint.empty()) {  // start the data where the checkpoint left off (run_training checks it)
    const SafetensorsReader ck(checkpoint + "/optimizer.safetensors");
    const auto it = ck.metadata().find("step");
    if (it != ck.metadata().end()) d.start_step = std::stoll(it->second);
  }
  std::unique_ptr<TrainData> source = open_train_data(d);
  if (speaker)
    std::fprintf(stderr, "train: %s (%lld images), batch %lld x %lld^2, %lld iterations, lr %g, on %s, out %s\n",
                 d.dataset.c_str(), static_cast<long long>(source->size()), static_cast<long long>(d.batch),
                 static_cast<long long>(d.crop), static_cast<long long>(o.config.iterations), o.config.lr,
                 o.device.str().c_str(), out.c_str());
  if (speaker && comm)
    std::fprintf(stderr, "train: data parallel over %d ranks (%s, %s, via %s:%d): global batch %lld\n",
                 launch.world_size, launch.launcher.c_str(), comm->kind().c_str(), launch.master_addr.c_str(),
                 launch.master_port, static_cast<long long>(d.batch * launch.world_size));

  // A redrawn progress bar on a terminal; in a log file the log lines (with their ETA) are the progress.
  const bool tty = speaker && isatty(STDERR_FILENO) != 0;
  std::unique_ptr<Progress> progress;
  int64_t first_step = 0;
  const auto start = std::chrono::steady_clock::now();
  const auto print = [&](const std::string& text) {
    if (!speaker) return;
    if (progress) progress->message(text);
    else std::fprintf(stderr, "%s\n", text.c_str());
  };
  o.on_step = [&](const StepStats& s) {
    if (!first_step) first_step = s.step;
    if (!tty) return;
    if (!progress) progress = std::make_unique<Progress>(o.config.iterations - s.step + 1, "train");
    progress->step(str_cat("step ", s.step, " loss ", s.total), false);
  };
  o.on_log = [&](const TrainLogLine& line) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const int64_t done = line.stats.step - first_step + 1, left = o.config.iterations - line.stats.step;
    print(str_cat(line.text, "  ETA ", duration_text(elapsed / double(done) * double(left))));
  };
  o.on_message = [&](const std::string& m) { print("train: " + m); };
  const std::string last = run_training(o, *source);
  if (progress) progress->finish();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (speaker)
    std::fprintf(stderr, "train: done in %s; final checkpoint %s\n", duration_text(seconds).c_str(), last.c_str());
  return 0;
}

}  // namespace mfuser::apps
