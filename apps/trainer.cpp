#include "apps/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>

#include "apps/progress.h"
#include "apps/sharded_adamw.h"
#include "kernels/adamw/adamw.h"
#include "kernels/sum_of_squares/sum_of_squares.h"
#include "loaders/config.h"
#include "loaders/safetensors.h"
#include "runtime/cuda.h"
#include "runtime/parallel.h"
#include "runtime/splitmix.h"

namespace mfuser::apps {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- TrainConfig ----

TrainConfig TrainConfig::parse(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw ConfigError(str_cat(source, ": invalid JSON: ", e.what()));
  }
  if (!j.is_object()) throw ConfigError(str_cat(source, ": the training config must be a JSON object"));
  TrainConfig c;
  const auto bad = [&](const std::string& key, const char* expected, const json& v) {
    throw ConfigError(str_cat(source, ": key '", key, "' must be ", expected, ", got ", v.dump()));
  };
  const auto number = [&](const std::string& key, const json& v) {
    if (!v.is_number()) bad(key, "a number", v);
    return v.get<double>();
  };
  const auto integer = [&](const std::string& key, const json& v) {
    if (!v.is_number_integer()) bad(key, "an integer", v);
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) bad(key, "an integer < 2^63", v);
    return v.get<int64_t>();
  };
  const auto string = [&](const std::string& key, const json& v) {
    if (!v.is_string()) bad(key, "a string", v);
    return v.get<std::string>();
  };
  for (const auto& [key, v] : j.items()) {
    if (key == "lr") c.lr = number(key, v);
    else if (key == "weight_decay") c.weight_decay = number(key, v);
    else if (key == "betas") {
      if (!v.is_array() || v.size() != 2 || !v[0].is_number() || !v[1].is_number()) bad(key, "an array of two numbers", v);
      c.beta1 = v[0].get<double>();
      c.beta2 = v[1].get<double>();
    } else if (key == "eps") c.eps = number(key, v);
    else if (key == "iterations") c.iterations = integer(key, v);
    else if (key == "warmup") c.warmup = integer(key, v);
    else if (key == "warmup_ratio") c.warmup_ratio = number(key, v);
    else if (key == "power") c.power = number(key, v);
    else if (key == "min_lr") c.min_lr = number(key, v);
    else if (key == "batch") c.batch = integer(key, v);
    else if (key == "crop") c.crop = integer(key, v);
    else if (key == "save_every") c.save_every = integer(key, v);
    else if (key == "log_every") c.log_every = integer(key, v);
    else if (key == "seed") {
      const int64_t s = integer(key, v);
      if (s < 0) bad(key, "an integer >= 0", v);
      c.seed = uint64_t(s);
    } else if (key == "dataset") c.dataset = string(key, v);
    else if (key == "root") c.root = string(key, v);
    else if (key == "resize_ratio") {
      if (!v.is_array() || v.size() != 2 || !v[0].is_number() || !v[1].is_number()) bad(key, "an array of two numbers", v);
      c.resize_ratio_min = v[0].get<double>();
      c.resize_ratio_max = v[1].get<double>();
    } else if (key == "photometric") {
      if (!v.is_boolean()) bad(key, "true or false", v);
      c.photometric = v.get<bool>();
    } else if (key == "rare_class_sampling") {
      if (!v.is_null() && !v.is_object()) bad(key, "an object or null", v);
      RareClassSampling& rcs = c.rare_class_sampling.emplace();
      rcs.enabled = v.is_object();
      if (rcs.enabled)
        for (const auto& [rk, rv] : v.items()) {
          const std::string name = "rare_class_sampling." + rk;
          if (rk == "temperature") rcs.temperature = number(name, rv);
          else if (rk == "min_pixels") rcs.min_pixels = integer(name, rv);
          else if (rk == "min_crop_ratio") rcs.min_crop_ratio = number(name, rv);
          else
            throw ConfigError(str_cat(source, ": unknown key '", name, "' (known: temperature, min_pixels, min_crop_ratio)"));
        }
    } else if (key == "zero1") {
      if (!v.is_boolean()) bad(key, "true or false", v);
      c.zero1 = v.get<bool>();
    } else if (key == "recompute") {
      if (!v.is_boolean()) bad(key, "true or false", v);
      c.recompute = v.get<bool>();
    } else if (key == "dropout") {
      if (!v.is_boolean()) bad(key, "true or false", v);
      c.dropout = v.get<bool>();
    } else
      throw ConfigError(str_cat(source, ": unknown key '", key,
                                "' (known: lr, weight_decay, betas, eps, iterations, warmup, warmup_ratio, power, "
                                "min_lr, batch, crop, save_every, log_every, seed, dataset, root, recompute, zero1, dropout, "
                                "resize_ratio, photometric, rare_class_sampling)"));
  }
  c.validate(source);
  return c;
}

TrainConfig TrainConfig::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(str_cat(path, ": cannot open the training config"));
  return parse(std::string(std::istreambuf_iterator<char>(in), {}), path);
}

void TrainConfig::validate(const std::string& source) const {
  const auto check = [&](bool ok, const char* key, const char* expected, auto value) {
    if (!ok) throw ConfigError(str_cat(source, ": key '", key, "' must be ", expected, ", got ", value));
  };
  const auto finite = [](double v) { return std::isfinite(v); };
  check(finite(lr) && lr > 0, "lr", "a finite number > 0", lr);
  check(finite(weight_decay) && weight_decay >= 0, "weight_decay", "a finite number >= 0", weight_decay);
  check(finite(beta1) && beta1 >= 0 && beta1 < 1, "betas", "two numbers in [0, 1) (beta1)", beta1);
  check(finite(beta2) && beta2 >= 0 && beta2 < 1, "betas", "two numbers in [0, 1) (beta2)", beta2);
  check(finite(eps) && eps >= 0, "eps", "a finite number >= 0", eps);
  check(iterations >= 1, "iterations", "an integer >= 1", iterations);
  check(warmup >= 0, "warmup", "an integer >= 0", warmup);
  check(finite(warmup_ratio) && warmup_ratio > 0 && warmup_ratio <= 1, "warmup_ratio", "a number in (0, 1]",
        warmup_ratio);
  check(finite(power) && power >= 0, "power", "a finite number >= 0", power);
  check(finite(min_lr) && min_lr >= 0 && min_lr <= lr, "min_lr", "a number in [0, lr]", min_lr);
  check(batch >= 1, "batch", "an integer >= 1", batch);
  check(crop >= 1, "crop", "an integer >= 1", crop);
  check(save_every >= 0, "save_every", "an integer >= 0 (0: only the final checkpoint)", save_every);
  check(log_every >= 1, "log_every", "an integer >= 1", log_every);
  check(!dataset.empty(), "dataset", "a data-set name (synthetic, cityscapes, ...)", "\"\"");
  check(finite(resize_ratio_min) && resize_ratio_min > 0 && finite(resize_ratio_max) &&
            resize_ratio_max >= resize_ratio_min,
        "resize_ratio", "[min, max] with 0 < min <= max", str_cat("[", resize_ratio_min, ", ", resize_ratio_max, "]"));
  const RareClassSampling rcs = effective_rare_class_sampling();
  check(finite(rcs.temperature) && rcs.temperature > 0, "rare_class_sampling.temperature", "a finite number > 0",
        rcs.temperature);
  check(rcs.min_pixels >= 0, "rare_class_sampling.min_pixels", "an integer >= 0", rcs.min_pixels);
  check(finite(rcs.min_crop_ratio) && rcs.min_crop_ratio >= 0, "rare_class_sampling.min_crop_ratio",
        "a finite number >= 0", rcs.min_crop_ratio);
}

std::string TrainConfig::to_json() const {
  const RareClassSampling rcs = effective_rare_class_sampling();  // written resolved: a resume keeps it
  const json j = {{"lr", lr},
                  {"weight_decay", weight_decay},
                  {"betas", {beta1, beta2}},
                  {"eps", eps},
                  {"iterations", iterations},
                  {"warmup", warmup},
                  {"warmup_ratio", warmup_ratio},
                  {"power", power},
                  {"min_lr", min_lr},
                  {"batch", batch},
                  {"crop", crop},
                  {"save_every", save_every},
                  {"log_every", log_every},
                  {"seed", seed},
                  {"dataset", dataset},
                  {"root", root},
                  {"recompute", recompute},
                  {"dropout", dropout},
                  {"zero1", zero1},
                  {"resize_ratio", {resize_ratio_min, resize_ratio_max}},
                  {"photometric", photometric},
                  {"rare_class_sampling", rcs.enabled ? json{{"temperature", rcs.temperature},
                                                             {"min_pixels", rcs.min_pixels},
                                                             {"min_crop_ratio", rcs.min_crop_ratio}}
                                                      : json(nullptr)}};
  return j.dump();
}

RareClassSampling TrainConfig::effective_rare_class_sampling() const {
  if (rare_class_sampling) return *rare_class_sampling;
  RareClassSampling official;
  official.enabled = dataset != "synthetic";
  return official;
}

kernels::PolySchedule TrainConfig::schedule() const {
  kernels::PolySchedule s;
  s.base_lr = lr;
  s.min_lr = min_lr;
  s.power = power;
  s.max_iters = iterations;
  s.warmup_iters = warmup;
  s.warmup_ratio = warmup_ratio;
  return s;
}

// ---- Trainer ----

namespace {

bool is_running_stat(const std::string& name) {
  return name.ends_with(".running_mean") || name.ends_with(".running_var");
}

double scalar(const Tensor& t) {
  const Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
  MFUSER_CHECK(host.dtype() == DType::f32 && host.numel() == 1, "trainer: expected a f32 scalar, got ", host.str());
  return double(host.data<float>()[0]);
}

std::string fmt(double v, int precision = 6) {
  std::ostringstream os;
  os.precision(precision);
  os << v;
  return os.str();
}

}  // namespace

Trainer::Trainer(const std::string& weights_path, const model::ModelConfig& model_config, const TrainConfig& config,
                 Device device, Communicator* comm)
    : config_(config), model_config_(model_config), device_(device), weights_path_(weights_path),
      single_(comm ? nullptr : make_single_communicator()), comm_(comm ? comm : single_.get()) {
  config_.validate();
  weights_ = std::make_unique<model::WeightStore>(weights_path);
  // The weights the optimizer and the BatchNorm updates write to must be owned: not views of the mapped file.
  weights_->set_owned([](const std::string& n) { return model::is_trainable(n) || is_running_stat(n); });
  model::TrainingGraphOptions options;
  options.recompute = config_.recompute;
  options.comm = comm_;
  options.zero1 = config_.zero1;
  options.loss_weights_input = true;
  options.dropout = config_.dropout;
  graph_ = model::build_training_graph(*weights_, model_config_, config_.batch, config_.crop, config_.crop, options);
  weights_->finish();
  executor_ = std::make_unique<graph::Executor>(*graph_.graph, device_);

  const graph::Graph& g = *graph_.graph;
  std::set<std::string> with_gradient;  // unused parameters get no gradient and no update (as torch)
  for (const model::GradientBucket& b : graph_.buckets)
    for (const model::GradientBucket::Slot& slot : b.slots) with_gradient.insert(slot.param);
  for (const graph::ValueId v : graph_.parameters) {
    const graph::Value& value = g.value(v);
    if (g.find("grad." + value.name) == graph::kNoValue && !with_gradient.contains(value.name)) continue;
    if (kernels::param_group_rule(value.name).lr_mult == 0) continue;  // frozen by its group
    MFUSER_CHECK(value.dtype == DType::f32, "trainer: parameter '", value.name, "' is ", dtype_name(value.dtype),
                 ", expected f32 master weights");
    names_.push_back(value.name);
    if (config_.zero1) continue;  // the sharded optimizer below keeps the state
    exp_avg_.push_back(Tensor::zeros(value.shape, DType::f32, device_));
    exp_avg_sq_.push_back(Tensor::zeros(value.shape, DType::f32, device_));
  }
  if (config_.zero1) {
    const std::set<std::string> updated(names_.begin(), names_.end());
    sharded_ = std::make_unique<ShardedAdamW>(
        graph_.buckets, [&](const std::string& name) { return updated.contains(name); }, *comm_, device_);
  }
  MFUSER_CHECK(!names_.empty(), "trainer: the training graph has no trainable parameter with a gradient");
  for (const graph::ValueId v : g.outputs()) {
    const std::string& name = g.value(v).name;
    constexpr std::string_view kSuffix = ".updated";
    if (name.ends_with(kSuffix) && is_running_stat(name.substr(0, name.size() - kSuffix.size())))
      running_stats_.emplace_back(name, name.substr(0, name.size() - kSuffix.size()));
  }
  for (int i = 0; i < graph_.predictions; ++i) {
    point_inputs_.push_back(str_cat("points.candidates.", i));
    point_inputs_.push_back(str_cat("points.randoms.", i));
  }
}

Trainer::~Trainer() = default;

// Uniform [0, 1) draws, element e of point input j at step s: splitmix64 of a key formed from (seed, s, j) plus
// the element's index in the group's global batch (rows from `first_row` on: row n is the n-th positive query
// of the global batch), top 24 bits. Counter-based, so any step's draws are reproducible without replaying
// earlier ones, and a rank draws for its positives exactly what one process with the whole batch draws.
void Trainer::draw_points(int64_t first_row) {
  const uint64_t step_key = splitmix64(splitmix64(config_.seed) ^ uint64_t(step_));
  for (size_t j = 0; j < point_inputs_.size(); ++j) {
    const graph::Value& value = graph_.graph->value(graph_.graph->at(point_inputs_[j]));
    Tensor host = Tensor::empty(value.shape, DType::f32);
    float* out = host.data<float>();
    const uint64_t key =
        splitmix64(step_key + 0x632BE59BD9B4E019ull * (j + 1)) + uint64_t(first_row * value.shape[1] * value.shape[2]);
    parallel_for(host.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e)
        out[e] = uniform24(splitmix64(key + uint64_t(e)));
    });
    executor_->set_input(point_inputs_[j], host);
  }
}

std::vector<float> Trainer::bind_group_normalization(const Tensor& labels) {
  const kernels::MaskLossCounts own = kernels::mask_loss_counts(labels, graph_.queries, graph_.mask_loss);
  const Tensor mine = Tensor::from_vector(std::vector<float>{float(own.class_weight_sum), float(own.positives)}, {2});
  Tensor all = Tensor::empty({world_size(), 2}, DType::f32);
  comm_->all_gather(mine, all);
  // Every rank derives the same means from the same gathered floats (so one rank's weights are exactly 1).
  const float* counts = all.data<float>();
  kernels::MaskLossCounts local{counts[2 * rank()], counts[2 * rank() + 1]}, group_mean;
  int64_t first_row = 0;
  for (int r = 0; r < world_size(); ++r) {
    group_mean.class_weight_sum += counts[2 * r];
    group_mean.positives += counts[2 * r + 1];
    if (r < rank()) first_row += int64_t(counts[2 * r + 1]);
  }
  group_mean.class_weight_sum /= world_size();
  group_mean.positives /= world_size();
  if (world_size() == 1) group_mean = local;
  std::vector<float> weights = model::loss_weights(graph_, local, group_mean);
  executor_->set_input("loss.weights", Tensor::from_vector(weights, {1, int64_t(weights.size())}));
  draw_points(first_row);
  return weights;
}

StepStats Trainer::step(const TrainBatch& batch) {
  const auto start = std::chrono::steady_clock::now();
  MFUSER_CHECK(step_ < config_.iterations, "trainer: all ", config_.iterations, " iterations are done");
  const Shape image_shape{config_.batch, 3, config_.crop, config_.crop};
  const Shape label_shape{config_.batch, config_.crop, config_.crop};
  MFUSER_CHECK(batch.images.defined() && batch.images.shape() == image_shape, "trainer: the batch's images are ",
               batch.images.defined() ? batch.images.str() : "missing", ", expected f32", image_shape.str());
  MFUSER_CHECK(batch.labels.defined() && batch.labels.shape() == label_shape && batch.labels.dtype() == DType::i64,
               "trainer: the batch's labels are ", batch.labels.defined() ? batch.labels.str() : "missing",
               ", expected i64", label_shape.str());
  executor_->set_input("image", batch.images);
  executor_->set_input("gt_semantic_seg", batch.labels);
  const std::vector<float> weights = bind_group_normalization(batch.labels);
  // The step's dropout masks, from (seed, step, rank): each rank drops its own elements, as each PyTorch
  // process draws from its own generator; a resumed run redraws the same masks.
  model::set_dropout_seed(*executor_, graph_,
                          splitmix64(splitmix64(config_.seed ^ 0xD50D0D5EEDull) ^ uint64_t(step_)) + uint64_t(rank()));
  executor_->run();

  // The group's losses: the mean over ranks of each rank's weighted parts (with one rank, its own losses).
  const size_t parts = graph_.losses.size();
  Tensor losses = Tensor::empty({int64_t(parts) + 1}, DType::f32);
  for (size_t k = 0; k < parts; ++k)
    losses.data<float>()[k] = float(scalar(executor_->get(graph_.graph->value(graph_.losses[k].second).name))) *
                              weights[k];
  losses.data<float>()[parts] = float(scalar(executor_->get("loss.total")));
  comm_->all_reduce(losses, losses, ReduceOp::mean);

  StepStats s;
  s.step = step_ + 1;
  s.total = losses.data<float>()[parts];
  std::string bad;
  for (size_t k = 0; k < parts; ++k) {
    s.losses.emplace_back(graph_.losses[k].first, losses.data<float>()[k]);
    if (!std::isfinite(s.losses.back().second)) bad += str_cat(" loss.", s.losses.back().first, " = ", s.losses.back().second, ";");
  }
  if (!std::isfinite(s.total) || !bad.empty())
    throw TrainingDiverged(str_cat("step ", s.step, ": the loss is not finite (loss.total = ", s.total, ";", bad,
                                   " e.g. too high a learning rate, or bad weights or data); stopped before "
                                   "updating the parameters"));

  std::vector<Tensor> grads;
  double sum_squares = 0;
  std::string first_bad;
  if (sharded_) {  // each rank holds a shard of the gradient: the norm adds the ranks' sums
    std::tie(sum_squares, first_bad) = sharded_->local_sum_of_squares(*executor_);
    Tensor total = Tensor::from_vector(std::vector<float>{float(sum_squares)}, {1});
    comm_->all_reduce(total, total, ReduceOp::sum);
    sum_squares = total.data<float>()[0];
    if (first_bad.empty() && !std::isfinite(sum_squares)) first_bad = "(on another rank)";
  } else {
    grads.reserve(names_.size());
    for (const std::string& name : names_) grads.push_back(executor_->get("grad." + name));
    if (hook_) hook_(names_, grads);
    // One reduction on the gradients' device; only one double per tensor comes back to the host.
    const std::vector<double> squares = kernels::sum_of_squares(grads);
    for (size_t i = 0; i < squares.size(); ++i) {
      if (!std::isfinite(squares[i]) && first_bad.empty()) first_bad = names_[i];
      sum_squares += squares[i];
    }
  }
  s.grad_norm = std::sqrt(sum_squares);
  if (!std::isfinite(s.grad_norm))
    throw TrainingDiverged(str_cat("step ", s.step, ": the gradient is not finite (first: grad.", first_bad,
                                   "; loss.total = ", s.total, "); stopped before updating the parameters"));

  const kernels::PolySchedule schedule = config_.schedule();
  s.lr = kernels::poly_lr(step_, schedule);
  const auto adamw_params = [&](const std::string& name) {
    const kernels::ParamGroupRule rule = kernels::param_group_rule(name);
    kernels::PolySchedule group = schedule;
    group.base_lr *= rule.lr_mult;  // mmcv scales the group's base lr; min_lr stays
    kernels::AdamWParams p;
    p.lr = kernels::poly_lr(step_, group);
    p.beta1 = config_.beta1;
    p.beta2 = config_.beta2;
    p.eps = config_.eps;
    p.weight_decay = config_.weight_decay * rule.decay_mult;
    p.step = step_ + 1;
    return p;
  };
  if (sharded_) {
    sharded_->step(*executor_, adamw_params);
  } else {
    for (size_t i = 0; i < names_.size(); ++i) {
      Tensor param = executor_->get(names_[i]);
      kernels::adamw_step(param, grads[i], exp_avg_[i], exp_avg_sq_[i], adamw_params(names_[i]));
    }
  }
  for (const auto& [updated, stat] : running_stats_) executor_->get(stat).copy_from(executor_->get(updated));
  ++step_;
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return s;
}

std::vector<std::pair<std::string, Tensor>> Trainer::state_dict() const {
  const SafetensorsReader reader(weights_path_);
  const graph::Graph& g = *graph_.graph;
  std::vector<std::pair<std::string, Tensor>> out;
  for (const SafetensorsEntry& e : reader.entries()) {
    const graph::ValueId v = g.find(e.name);
    const bool live = (model::is_trainable(e.name) || is_running_stat(e.name)) && v != graph::kNoValue &&
                      g.value(v).kind == graph::ValueKind::weight;
    out.emplace_back(e.name, live ? executor_->get(e.name).to(Device::cpu()) : reader.view(e.name));
  }
  return out;
}

std::string Trainer::save(const std::string& out_dir, const std::string& model_config_path) const {
  const std::string name = str_cat("iter_", step_);
  const fs::path final_dir = fs::path(out_dir) / name, tmp = fs::path(out_dir) / ("." + name + ".tmp");
  // ZeRO-1: every rank takes part in gathering the optimizer state.
  std::vector<std::pair<std::string, Tensor>> sharded_state;
  if (sharded_) sharded_state = sharded_->gather_state(*executor_);
  if (rank() != 0) return final_dir.string();  // every rank holds the same parameters: rank 0 writes them
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  const std::map<std::string, std::string> meta = {{"format", "mfuser"},
                                                    {"step", std::to_string(step_)},
                                                    {"seed", std::to_string(config_.seed)},
                                                    {"points_rng", "splitmix64(seed, step)"},
                                                    {"train_config", config_.to_json()}};
  write_safetensors((tmp / "model.safetensors").string(), state_dict(), meta);
  std::vector<std::pair<std::string, Tensor>> optimizer = std::move(sharded_state);
  for (size_t i = 0; i < exp_avg_.size(); ++i) {
    optimizer.emplace_back("optimizer.exp_avg." + names_[i], exp_avg_[i]);
    optimizer.emplace_back("optimizer.exp_avg_sq." + names_[i], exp_avg_sq_[i]);
  }
  write_safetensors((tmp / "optimizer.safetensors").string(), optimizer, meta);
  if (!model_config_path.empty()) fs::copy_file(model_config_path, tmp / "config.json");
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  // OUT/latest, atomically.
  const fs::path latest = fs::path(out_dir) / "latest", latest_tmp = fs::path(out_dir) / ".latest.tmp";
  {
    std::ofstream f(latest_tmp, std::ios::trunc);
    f << name << "\n";
    MFUSER_CHECK(f.good(), "train: cannot write ", latest_tmp.string());
  }
  fs::rename(latest_tmp, latest);
  return final_dir.string();
}

void Trainer::load_optimizer(const std::string& checkpoint_dir) {
  const std::string path = (fs::path(checkpoint_dir) / "optimizer.safetensors").string();
  const SafetensorsReader reader(path);
  const auto& meta = reader.metadata();
  const auto step = meta.find("step");
  MFUSER_CHECK(step != meta.end(), path, ": no 'step' in the metadata (not a checkpoint of mfuser train)");
  const int64_t steps = std::stoll(step->second);
  MFUSER_CHECK(steps >= 0 && steps <= config_.iterations, path, ": step ", steps, " is outside [0, ",
               config_.iterations, "] (iterations)");
  const auto seed = meta.find("seed");
  MFUSER_CHECK(seed != meta.end() && seed->second == std::to_string(config_.seed), path, ": the checkpoint was "
               "trained with seed ", seed == meta.end() ? "?" : seed->second, ", the config says ", config_.seed);
  if (sharded_) sharded_->load_state(reader, path, *executor_);
  for (size_t i = 0; i < exp_avg_.size(); ++i) {
    for (const auto& [prefix, state] : {std::pair{"optimizer.exp_avg.", &exp_avg_[i]},
                                        std::pair{"optimizer.exp_avg_sq.", &exp_avg_sq_[i]}}) {
      const std::string key = prefix + names_[i];
      const SafetensorsEntry* e = reader.find(key);
      MFUSER_CHECK(e && e->dtype == "F32" && Shape(std::span(e->shape)) == state->shape(), path, ": ", key,
                   e ? " has another dtype or shape than the parameter" : " is missing");
      state->copy_from(reader.view(key));
    }
  }
  step_ = steps;
}

// ---- The loop ----

std::string resolve_checkpoint(const std::string& path) {
  if (fs::exists(fs::path(path) / "model.safetensors")) return path;
  const fs::path latest = fs::path(path) / "latest";
  std::ifstream in(latest);
  MFUSER_CHECK(in.good(), "--resume ", path, ": neither a checkpoint folder (model.safetensors) nor a training "
               "output folder (latest)");
  std::string name;
  std::getline(in, name);
  const fs::path dir = fs::path(path) / name;
  MFUSER_CHECK(!name.empty() && fs::exists(dir / "model.safetensors") && fs::exists(dir / "optimizer.safetensors"),
               latest.string(), " names '", name, "', which is not a complete checkpoint folder");
  return dir.string();
}

TrainConfig checkpoint_config(const std::string& checkpoint_dir) {
  const std::string path = (fs::path(checkpoint_dir) / "model.safetensors").string();
  const SafetensorsReader reader(path);
  const auto it = reader.metadata().find("train_config");
  MFUSER_CHECK(it != reader.metadata().end(), path, ": no training config in the metadata");
  return TrainConfig::parse(it->second, path + " (train_config metadata)");
}

std::string run_training(const TrainRunOptions& options, TrainData& data) {
  const TrainConfig& cfg = options.config;
  std::string weights = options.weights, checkpoint;
  if (!options.resume.empty()) {
    checkpoint = resolve_checkpoint(options.resume);
    weights = (fs::path(checkpoint) / "model.safetensors").string();
  }
  MFUSER_CHECK(!options.out_dir.empty(), "train: no output folder (--out)");
  Trainer trainer(weights, options.model_config, cfg, options.device, options.comm);
  const bool writer = trainer.rank() == 0;
  const auto say = [&](const std::string& m) {
    if (options.on_message) options.on_message(m);
  };
  if (!checkpoint.empty()) {
    trainer.load_optimizer(checkpoint);
    say(str_cat("resumed from ", checkpoint, " at step ", trainer.steps_done()));
  }
  if (data.step() != trainer.steps_done()) data.skip_to(trainer.steps_done());
  const fs::path log_path = fs::path(options.out_dir) / "train_log.jsonl";
  std::ofstream log;
  if (writer) {
    fs::create_directories(options.out_dir);
    log.open(log_path, std::ios::app);
    MFUSER_CHECK(log.good(), "train: cannot write ", log_path.string());
  }

  std::string last = checkpoint;
  double wait_sum = 0, step_sum = 0;
  int64_t since_log = 0;
  const auto run_start = std::chrono::steady_clock::now();
  while (trainer.steps_done() < cfg.iterations) {
    const auto before = std::chrono::steady_clock::now();
    TrainBatch batch = data.next();
    MFUSER_CHECK(batch.step == trainer.steps_done(), "train: the data source gave the batch of step ", batch.step,
                 " for step ", trainer.steps_done());
    const double waited = std::max(batch.wait_seconds,
                                   std::chrono::duration<double>(std::chrono::steady_clock::now() - before).count());
    StepStats s;
    try {
      s = trainer.step(batch);
    } catch (const TrainingDiverged& e) {
      throw TrainingDiverged(str_cat(e.what(), "; the last checkpoint, kept as it was: ",
                                     last.empty() ? std::string("none (none was written yet)") : last));
    }
    wait_sum += waited;
    step_sum += s.seconds;
    ++since_log;
    if (options.on_step) options.on_step(s);

    if (s.step % cfg.log_every == 0 || s.step == cfg.iterations) {
      TrainLogLine line;
      line.stats = s;
      line.data_wait_seconds = wait_sum / double(since_log);
      line.step_seconds = step_sum / double(since_log);
      line.images_per_second = double(cfg.batch * trainer.world_size() * since_log) / (wait_sum + step_sum);
      line.memory_bytes =
          options.device.is_cuda() ? cuda::memory_stats(options.device.index).peak : peak_rss_bytes();
      std::string terms;
      json losses = json::object();
      for (const auto& [name, v] : s.losses) {
        terms += str_cat(" ", name, " ", fmt(v, 4));
        losses[name] = v;
      }
      line.text = str_cat("step ", s.step, "/", cfg.iterations, "  loss ", fmt(s.total), " (", terms.substr(1),
                          ")  lr ", fmt(s.lr, 4), "  grad_norm ", fmt(s.grad_norm, 4), "  step ",
                          fmt(line.step_seconds * 1e3, 4), " ms  ", fmt(line.images_per_second, 3), " img/s  data ",
                          fmt(line.data_wait_seconds * 1e3, 3), " ms  mem ", human_bytes(double(line.memory_bytes)));
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
      line.json = json{{"step", s.step},
                       {"loss", s.total},
                       {"losses", losses},
                       {"lr", s.lr},
                       {"grad_norm", s.grad_norm},
                       {"step_ms", line.step_seconds * 1e3},
                       {"images_per_s", line.images_per_second},
                       {"data_wait_ms", line.data_wait_seconds * 1e3},
                       {"memory_bytes", line.memory_bytes},
                       {"elapsed_s", elapsed}}
                      .dump();
      if (writer) {
        log << line.json << "\n";
        log.flush();
      }
      if (options.on_log) options.on_log(line);
      wait_sum = step_sum = 0;
      since_log = 0;
    }
    if ((cfg.save_every > 0 && s.step % cfg.save_every == 0) || s.step == cfg.iterations) {
      last = trainer.save(options.out_dir, options.model_config_path);
      say(str_cat("saved ", last));
    }
  }
  return last;
}

}  // namespace mfuser::apps
