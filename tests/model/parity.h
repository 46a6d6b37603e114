// Parity against the PyTorch oracle: the golden-data generator (tools/reference/golden.py, run by a ctest
// fixture with a fresh seed) writes random weights, an input batch and the output of every module; these
// helpers build our graph on the same weights and compare tensor by tensor.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "graph/executor.h"
#include "graph/model/builder.h"
#include "graph/model/config.h"
#include "graph/model/training.h"
#include "loaders/safetensors.h"
#include "tests/common/test_util.h"

namespace mfuser::test {

struct GoldenModel {
  std::string dir;                 // $MFUSER_GOLDEN_DIR/model_<config>
  model::ModelConfig config;
  std::unique_ptr<SafetensorsReader> golden;  // golden.safetensors: module outputs by name
  std::unique_ptr<SafetensorsReader> inputs;  // input.safetensors: "img" (CLIP-normalized), "rgb"
  std::string weights_path() const { return dir + "/model.safetensors"; }
  std::string seed;                // the generator's seed, for failure messages
};

// Loads the golden data set `name` ("tiny") written by the fixture golden_model_<name>.
GoldenModel load_golden_model(const std::string& name);

// Relative L2 error of `ours` against golden tensor `golden_name`, after permuting the golden tensor by
// `golden_perm` (empty: as stored) so it matches our batch-first layout. Asserts shapes match. A golden
// tensor with one more dim than ours is a stack of per-call outputs: the last one is compared.
ErrorStats compare_to_golden(const GoldenModel& g, const std::string& golden_name, const Tensor& ours,
                             const std::vector<int>& golden_perm = {});

// EXPECTs rel_l2 <= tol for value `our_name` of a finished run against `golden_name`, and reports the error.
void expect_matches_golden(const GoldenModel& g, const graph::Executor& ex, const std::string& our_name,
                           const std::string& golden_name, double tol, const std::vector<int>& golden_perm = {});

// The oracle's mask-loss point draws, in its order, fed to the training graph `t`'s point inputs: per prediction
// one [1, P, 2] per image (ignored by the identity assigner), then, when the batch has positives, [N, S, 2]
// candidates and [N, R, 2] randoms. Ours are [B*Q, S|R, 2] buffers whose first N rows are used; the rest is
// zeros (never read).
void feed_point_draws(const GoldenModel& g, const model::TrainingGraph& t, int64_t batch, graph::Executor& ex);

// The training step on g's weights and inputs with the oracle's point draws, run on the CPU; every loss part and
// the total are checked against the oracle's (relative 1e-5; they are 0-d there, [1] here). The weights
// outlive the graph that binds them.
struct TrainingStepRun {
  std::unique_ptr<model::WeightStore> weights;
  model::TrainingGraph graph;
  std::unique_ptr<graph::Executor> executor;
};
std::unique_ptr<TrainingStepRun> run_training_step_checking_losses(const GoldenModel& g);

// Our gradients against the oracle's "grad.<param>": a parameter we give none must have a zero one there (unused
// on both sides); one whose oracle gradient is below `zero_bound` everywhere (a bias right before a
// batch-statistics BatchNorm: its true gradient is 0, both sides hold rounding noise) is held to max abs
// `zero_bound`; every other one goes to `check` with our error. Every trainable parameter of ours must have an
// oracle gradient.
void compare_gradients(const GoldenModel& g, const model::TrainingGraph& t, const graph::Executor& ex,
                       double zero_bound, const std::function<void(const std::string& param, const ErrorStats& err)>& check);

// Share of (batch, pixel) positions whose argmax over dim 1 (first maximum on ties) agrees between two host
// f32 [B, K, H, W] tensors.
double argmax_agreement(const Tensor& ours, const Tensor& ref);

// The whole model (MfuserModel on g's weights, CPU) against the oracle: the text features, every module the
// oracle recorded that our graph names too (rel L2 <= module_tol; module_tol < 0: report only), the logits
// (<= logits_tol) and the share of pixels whose argmax class agrees (>= min_agreement).
void check_whole_model(const GoldenModel& g, double module_tol, double logits_tol, double min_agreement);

}  // namespace mfuser::test
