// Training MFuser-CLIP (`mfuser train`): the training configuration, the Trainer (one optimizer step on the
// training graph of graph/model/training.h), its checkpoints, and the training loop the command runs.
//
// A step: bind the batch and the loss-part weights (the group's loss normalization), draw the mask losses'
// point inputs (a counter-based generator keyed by (seed, step, the global row), so a resumed run draws
// exactly what an uninterrupted one does, and N ranks what one process with all their images draws), run
// the graph (forward + backward; with several ranks the gradients come out averaged), check that every loss
// is finite (else TrainingDiverged, before anything is updated), call the gradient hook, AdamW on every
// trainable parameter (lr from the poly schedule, mmcv's parameter-group rule), and copy the BatchNorm
// running statistics back.
//
// Parameters are updated where the executor keeps them (Executor::get(name): the bound host tensor on CPU, the
// device copy on CUDA), so there is one code path for both devices; the WeightStore hands out owned, writable
// copies for them (WeightStore::set_owned) instead of read-only views of the mapped file.
//
// Checkpoint folder OUT/iter_<step>/ (written as OUT/.iter_<step>.tmp and renamed, so it is complete or absent):
//   model.safetensors      the model state dict under the official key names (every tensor of the initial
//                          weights file, trainable ones and BatchNorm statistics at their current values), so
//                          `mfuser segment --weights OUT/iter_N/model.safetensors` loads it; metadata: step,
//                          seed, the training config (JSON)
//   optimizer.safetensors  "optimizer.exp_avg.<name>", "optimizer.exp_avg_sq.<name>" per trainable parameter;
//                          metadata: step, seed
//   config.json            the model config
// and OUT/latest names the newest one. Resuming from it reaches bitwise the parameters of an uninterrupted run
// (same device, same thread count): the weights, both moments and the step come back exactly, the point draws
// are keyed by the step, and the data stream continues at the step (TrainData::skip_to: a batch is a pure
// function of the options and its step).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "apps/train_data.h"
#include "graph/executor.h"
#include "graph/model/config.h"
#include "graph/model/training.h"
#include "kernels/adamw/lr_schedule.h"
#include "runtime/communicator.h"
#include "runtime/error.h"

namespace mfuser::apps {

class ShardedAdamW;

// The training configuration (`--config-train FILE`): every key optional, the official values as defaults
// (MFuser configs: AdamW lr 1e-4, weight decay 1e-4; schedule_20k: poly 0.9 to 1e-6, linear warmup 1500
// iterations from 1e-6; 2 images per GPU, 512 crops).
struct TrainConfig {
  double lr = 1e-4;
  double weight_decay = 1e-4;
  double beta1 = 0.9, beta2 = 0.999;  // JSON: "betas": [0.9, 0.999]
  double eps = 1e-8;
  int64_t iterations = 20000;
  int64_t warmup = 1500;  // linear warmup iterations (0: none)
  double warmup_ratio = 1e-6;
  double power = 0.9;
  double min_lr = 1e-6;
  int64_t batch = 2;
  int64_t crop = 512;
  int64_t save_every = 2000;  // 0: only the final checkpoint
  int64_t log_every = 10;
  uint64_t seed = 0;
  std::string dataset = "synthetic";
  std::string root;
  bool recompute = false;  // activation checkpointing per encoder layer (model::TrainingGraphOptions)
  bool zero1 = false;      // data parallel: AdamW state sharded over the ranks (apps/sharded_adamw.h)
  bool dropout = true;     // upstream's training-mode dropout and DropPath (model::TrainingGraphOptions)
  // Augmentation and sampling (apps/train_data.h): the resize ratio range, the photometric distortion, and
  // rare-class sampling ("rare_class_sampling": {"temperature", "min_pixels", "min_crop_ratio"}, each
  // optional with MFuser's values, or null: off). Unset: on with MFuser's values, as every official config has
  // it, except on the synthetic data set (whose small images hold no class's 3000 pixels).
  double resize_ratio_min = 0.5, resize_ratio_max = 2.0;  // JSON: "resize_ratio": [0.5, 2.0]
  bool photometric = true;
  std::optional<RareClassSampling> rare_class_sampling;
  RareClassSampling effective_rare_class_sampling() const;

  // Parses JSON text; unknown keys and bad values are ConfigErrors naming `source` and the key.
  static TrainConfig parse(const std::string& text, const std::string& source = "<training config>");
  static TrainConfig load(const std::string& path);
  // Checks every value (also after command-line overrides); throws naming the key.
  void validate(const std::string& source = "training config") const;
  std::string to_json() const;  // all keys, round-trips through parse()
  kernels::PolySchedule schedule() const;
};

// A step whose losses are not finite: nothing was updated.
class TrainingDiverged : public Error {
 public:
  using Error::Error;
};

struct StepStats {
  int64_t step = 0;  // the number of updates done after this step (1 for the first)
  double lr = 0;     // base learning rate of this step (lr_mult 1 group)
  double total = 0;  // loss.total
  std::vector<std::pair<std::string, double>> losses;  // official names without "loss."
  double grad_norm = 0;  // L2 norm over every trainable gradient (after the hook)
  double seconds = 0;    // the step itself (bind, run, optimizer), not the data wait
};

// Called with every trainable parameter's gradient (executor views: modify in place) between backward and
// the optimizer, in parameter order (after the data-parallel average; not called with ZeRO-1, where no rank
// holds whole gradients).
using GradientHook = std::function<void(std::span<const std::string> names, std::span<Tensor> grads)>;

class Trainer {
 public:
  // Builds the training graph for `config.batch` crops of `config.crop` pixels on the weights file and places
  // it on `device`. Optimizer state starts at zero, step 0.
  // `comm`: the data-parallel group this Trainer is one rank of (not owned; null: a single process). Every rank
  // steps on its own `config.batch` crops; SyncBN, gradient averaging and the loss normalization make N ranks
  // reach the parameters one process reaches with batch N * config.batch (graph/model/distributed.h,
  // training.h loss_weights), and StepStats' losses are the group's.
  Trainer(const std::string& weights_path, const model::ModelConfig& model_config, const TrainConfig& config,
          Device device, Communicator* comm = nullptr);
  ~Trainer();

  // Restores the optimizer state and step of a checkpoint folder (the weights come from its model.safetensors,
  // which must be the weights_path this Trainer was built on).
  void load_optimizer(const std::string& checkpoint_dir);
  // One step on `batch` (shapes must match config.batch / crop). Throws TrainingDiverged on a non-finite loss
  // or gradient norm, before any parameter is changed.
  StepStats step(const TrainBatch& batch);
  // Writes the checkpoint folder OUT/iter_<step> atomically (see above), with a copy of the model config
  // file when given, points OUT/latest at it, and returns its path.
  std::string save(const std::string& out_dir, const std::string& model_config_path = {}) const;

  int64_t steps_done() const { return step_; }
  const TrainConfig& config() const { return config_; }
  const std::vector<std::string>& parameter_names() const { return names_; }
  // The parameter (or any weight) as the executor holds it: a view on its device (write to it to poison).
  Tensor weight(const std::string& name) const { return executor_->get(name); }
  // The model state dict at its current values, host tensors in the weights file's order.
  std::vector<std::pair<std::string, Tensor>> state_dict() const;
  void set_gradient_hook(GradientHook hook) { hook_ = std::move(hook); }
  Device device() const { return device_; }
  int rank() const { return comm_->rank(); }
  int world_size() const { return comm_->world_size(); }

 private:
  void draw_points(int64_t first_row);
  // Binds "loss.weights" (the group's loss normalization, training.h loss_weights) and the point draws for this
  // step's labels; returns the loss weights.
  std::vector<float> bind_group_normalization(const Tensor& labels);

  TrainConfig config_;
  model::ModelConfig model_config_;
  Device device_;
  std::string weights_path_;
  std::unique_ptr<model::WeightStore> weights_;
  model::TrainingGraph graph_;
  std::unique_ptr<graph::Executor> executor_;
  std::vector<std::string> names_;  // trainable parameters (graph order)
  std::vector<Tensor> exp_avg_, exp_avg_sq_;     // per parameter (empty with ZeRO-1)
  std::unique_ptr<ShardedAdamW> sharded_;        // ZeRO-1's optimizer state
  std::vector<std::pair<std::string, std::string>> running_stats_;  // (updated output, weight)
  std::vector<std::string> point_inputs_;
  GradientHook hook_;
  std::unique_ptr<Communicator> single_;  // the group of one when no communicator is given
  Communicator* comm_;
  int64_t step_ = 0;
};

// ---- The training loop (what `mfuser train` runs) ----

struct TrainLogLine {
  StepStats stats;
  double data_wait_seconds = 0;  // mean over the steps since the last line
  double step_seconds = 0;       // mean over the steps since the last line
  double images_per_second = 0;
  size_t memory_bytes = 0;  // CPU peak RSS, or the CUDA allocator's peak
  std::string text;         // the human-readable line
  std::string json;         // the JSON-lines record
};

struct TrainRunOptions {
  std::string weights;  // initial weights (ignored when resuming)
  model::ModelConfig model_config;
  std::string model_config_path;  // copied into every checkpoint
  TrainConfig config;
  std::string out_dir;
  std::string resume;  // a checkpoint folder, or an out folder (its `latest`); empty: start fresh
  Device device = Device::cpu();
  // The data-parallel group (null: one process). Only rank 0 writes checkpoints and the log file; every rank
  // calls the callbacks.
  Communicator* comm = nullptr;
  // Called after every step (progress) and at every log line; both optional.
  std::function<void(const StepStats&)> on_step;
  std::function<void(const TrainLogLine&)> on_log;
  std::function<void(const std::string&)> on_message;  // checkpoints written, resume info
};

// The checkpoint folder `path` names: itself when it holds model.safetensors, else the one its `latest` names.
std::string resolve_checkpoint(const std::string& path);
// The training config stored in a checkpoint's model.safetensors.
TrainConfig checkpoint_config(const std::string& checkpoint_dir);

// Runs steps until config.iterations (from the checkpoint's step when resuming), saving every save_every steps
// and at the end, logging every log_every steps to on_log and to OUT/train_log.jsonl (appended). `data` is
// moved to the resumed step (TrainData::skip_to) unless it already starts there. Returns the path of the final checkpoint. A diverged step throws
// TrainingDiverged naming the step and the last checkpoint (kept as it was).
std::string run_training(const TrainRunOptions& options, TrainData& data);

}  // namespace mfuser::apps
