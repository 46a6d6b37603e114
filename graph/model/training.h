// The MFuser-CLIP training step as one graph: the training-mode forward (BatchNorm on batch statistics; the
// random masks of dropout / drop path are off, see below), the official losses, and the backward of their
// sum into every trainable parameter (backward.h), each gradient a graph output "grad.<parameter name>".
//
// Inputs:
//   "image"            f32 [B, 3, H, W], CLIP-normalized
//   "gt_semantic_seg"  i64 [B, H, W], trainIds, 255 = ignore
//   "points.candidates.<i>" / "points.randoms.<i>" for each decode-head prediction i (decoder_layers + 1):
//                      uniform [0, 1) draws of the mask losses' point sampling (kernels/mask_loss), drawn
//                      by the trainer each step (the graph itself is deterministic)
// Outputs: "loss.total" [1, 1] and its parts, named as the official loss dict ("loss.scr_map.loss_seg",
// "loss.decode.loss_cls", "loss.decode.d0.loss_mask", ...); "grad.<name>" for every trainable parameter;
// "<prefix>.running_mean.updated" / "...running_var.updated" of the FPN BatchNorms.
//
// Trainable (upstream's freezing): everything but the text encoder and the backbone parameters whose name
// holds neither "adapter" nor "fpn" (the CLIP and DINOv2 towers). Gradients still flow through the frozen
// towers' activations to the adapters and, through the text encoder, to `contexts`.
//
// Not modelled (yet): dropout (MVFuser proj_drop, the context decoder's) and the CLIP blocks' drop path are
// active in upstream training; this graph runs them as identities, which is what the gradient parity tests
// need (the oracle's set_deterministic) and what a deterministic step gives.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "graph/graph.h"
#include "graph/model/backward.h"
#include "graph/model/config.h"
#include "graph/model/distributed.h"
#include "graph/model/weights.h"
#include "kernels/mask_loss/mask_loss.h"

namespace mfuser::graph {
class Executor;
}

namespace mfuser::model {

struct TrainingGraph {
  std::unique_ptr<graph::Graph> graph;
  ValueId total_loss = graph::kNoValue;
  std::vector<std::pair<std::string, ValueId>> losses;  // official loss-dict names (without "loss.")
  std::vector<ValueId> parameters;                      // trainable weights that got a gradient
  Gradients gradients;
  kernels::MaskLossConfig mask_loss;  // the decode head's loss settings (sizes of the point inputs)
  int predictions = 0;                // decode-head predictions with a loss (decoder_layers + 1)
  size_t forward_nodes = 0;           // nodes [0, forward_nodes) are the forward and the losses; then backward
  int64_t queries = 0;                // decode-head queries per image
  std::vector<GradientBucket> buckets;  // data parallel: the gradient buckets, in reduction order
  // The i64 [1] input "dropout.seed" the step's masks are drawn from (set it before every run), or kNoValue
  // without dropout.
  ValueId dropout_seed = graph::kNoValue;
};

// Sets the step's dropout seed (TrainingGraph::dropout_seed) on an executor of `graph`; nothing without dropout.
void set_dropout_seed(graph::Executor& executor, const TrainingGraph& graph, uint64_t seed);

// Upstream's set_trainable, by state-dict name.
bool is_trainable(std::string_view parameter_name);

// The decode head's loss settings for `cfg`: class weight 0.1 for "no object", loss weights 2 / 5 / 5, and the
// config's point sampling (official: 12544 points, oversample 3, importance 0.75).
kernels::MaskLossConfig mask_loss_config(const ModelConfig& cfg);

// How the training graph is built (defaults: the plain step).
struct TrainingGraphOptions {
  // Activation checkpointing per encoder layer (each backbone layer with its adapter, each text encoder
  // block): the backward recomputes a layer's activations instead of keeping them (backward.h).
  bool recompute = false;
  // Data parallel (graph/model/distributed.h): with a group communicator (not make_single_communicator's; any
  // world size, 1 included) the FPN's BatchNorms are SyncBN and "grad.<name>" are the gradients averaged over
  // the ranks (bucketed all-reduces in the backward). Not owned; must outlive the graph's runs.
  Communicator* comm = nullptr;
  size_t bucket_bytes = GradientBuckets::kDefaultBucketBytes;
  // ZeRO-1: the buckets are reduce-scattered instead of all-reduced; the graph then outputs this rank's shards
  // "grad_shard.<k>" (TrainingGraph::buckets says where each parameter lies) instead of "grad.<name>".
  bool zero1 = false;
  // The loss parts' weights in loss.total become the graph input "loss.weights" f32 [1, parts] (else all 1):
  // the trainer sets them each step so that every rank's loss is normalized by the whole group's counts
  // (loss_weights below).
  bool loss_weights_input = false;
  // Storage type of weights, activations and gradients (Builder): bf16 runs on CUDA (and, widened, on the CPU as
  // its reference: graph/executor.h); the losses are computed in f32 over f32 copies of the logits, as under
  // PyTorch's autocast.
  DType storage = DType::f32;
  // Training-mode dropout and DropPath where upstream has them (ModelConfig's rates; Builder::dropout). Parity
  // tests against PyTorch turn them off: its random stream cannot be shared.
  bool dropout = true;
};

// The weights of the loss parts (TrainingGraph::losses order) that turn a rank's losses, normalized by its own
// counts, into its share of the group's: loss_cls by local / group-mean class-weight sum, loss_mask and
// loss_dice by max(local positives, 1) / max(group-mean positives, 1) (mmdet's reduce_mean of num_total_masks),
// the score-map loss (a mean over equally many pixels per rank) by 1. Averaging the ranks' gradients then gives
// the gradient of the loss of the whole global batch, as one process with all of it computes; with one rank
// every weight is exactly 1. (Upstream normalizes loss_cls by each rank's own class-weight sum: the same with
// one GPU, not with several.)
// `local` and `group_mean` are kernels::mask_loss_counts of this rank's labels and their mean over the ranks.
std::vector<float> loss_weights(const TrainingGraph& graph, const kernels::MaskLossCounts& local,
                                const kernels::MaskLossCounts& group_mean);

TrainingGraph build_training_graph(WeightStore& weights, const ModelConfig& cfg, int64_t batch, int64_t height,
                                   int64_t width, const TrainingGraphOptions& options = {});

}  // namespace mfuser::model
