#include "graph/model/training.h"

#include <algorithm>
#include <optional>

#include "graph/executor.h"
#include "graph/model/builder.h"
#include "graph/model/loss.h"
#include "graph/model/modules.h"

namespace mfuser::model {

bool is_trainable(std::string_view name) {
  if (name.starts_with("text_encoder.")) return false;
  if (name.ends_with(".running_mean") || name.ends_with(".running_var")) return false;  // buffers
  if (name.starts_with("backbone."))
    return name.find("adapter") != std::string_view::npos || name.find("fpn") != std::string_view::npos;
  return true;  // contexts, gamma, context_decoder, decode_head
}

kernels::MaskLossConfig mask_loss_config(const ModelConfig& cfg) {
  kernels::MaskLossConfig c;
  c.num_classes = cfg.num_classes;
  c.class_weight.assign(size_t(cfg.num_classes), 1.f);
  c.class_weight.push_back(0.1f);  // "no object"
  c.num_points = cfg.decode_head.train_num_points;
  c.oversample_ratio = cfg.decode_head.oversample_ratio;
  c.importance_sample_ratio = cfg.decode_head.importance_sample_ratio;
  return c;
}

namespace {

// The f32 view a loss reads: v itself, or its f32 copy in a bf16 graph.
ValueId as_f32(Builder& b, ValueId v) {
  return b.dtype(v) == DType::f32 ? v : b.cast(v, DType::f32, b.graph().value(v).name + ".f32");
}

// The auxiliary score map of after_extract_feat: cosine similarities of every pixel's visual embedding with
// every refined class embedding, over tau: [B, K, g, g].
ValueId score_map(Builder& b, const ModelConfig& cfg, ValueId visual_embedding, ValueId text_embeddings) {
  const Shape vs = b.shape(visual_embedding);  // [B, E, g, g]
  const ValueId visual = b.reshape(b.l2norm(visual_embedding, 1, "score_map.visual_normalized"),
                                   {vs[0], vs[1], vs[2] * vs[3]});
  const ValueId text = b.l2norm(text_embeddings, -1, "score_map.text_normalized");  // [B, K, E]
  const ValueId scores = b.matmul(text, visual, false, "score_map", 1.f / cfg.tau);
  return b.reshape(scores, {vs[0], b.shape(text)[1], vs[2], vs[3]});
}

}  // namespace

TrainingGraph build_training_graph(WeightStore& weights, const ModelConfig& cfg, int64_t batch, int64_t height,
                                   int64_t width, const TrainingGraphOptions& options) {
  TrainingGraph t;
  t.graph = std::make_unique<Graph>();
  Graph& g = *t.graph;
  Tape tape;
  Builder b(g, weights, options.storage);
  b.set_tape(&tape);
  b.set_training(true);
  b.set_dropout(options.dropout);
  // A real communicator (socket, NCCL) makes the data-parallel graph even for one rank, so that a world-size-1
  // run exercises SyncBN and the bucketed all-reduces; the single-process one (or none) the plain graph.
  const bool data_parallel = options.comm && options.comm->kind() != "single";
  b.set_communicator(data_parallel ? options.comm : nullptr);

  const ValueId image = g.input("image", {batch, 3, height, width}, options.storage);  // f32 data converts
  const ValueId gt = g.input("gt_semantic_seg", {batch, height, width}, DType::i64);
  const BackboneOutputs backbone = build_backbone(b, cfg, image);

  // The text encoder runs in the graph: `contexts` is trained through it.
  const ValueId ids = g.constant("texts", weights.get_raw("texts", DType::i64, {cfg.num_classes, cfg.text.context_length}));
  ValueId text = build_text_encoder(b, cfg, ids);
  if (batch > 1) text = b.concat(std::vector<ValueId>(size_t(batch), text), 0, "text_encoder.batch");
  const ValueId text_embeddings =
      build_context_decoder(b, cfg, text, backbone.global_embedding, backbone.visual_embedding);
  const HeadOutputs head = build_decode_head(b, cfg, backbone.features, text_embeddings);

  // Losses, in the official loss dict's order and names.
  std::vector<ValueId> parts;
  const auto name_loss = [&](ValueId v, const std::string& name) {
    const ValueId named = b.reshape(v, {1}, "loss." + name);
    g.mark_output(named);
    t.losses.emplace_back(name, named);
    parts.push_back(named);
  };
  name_loss(seg_cross_entropy(b, as_f32(b, score_map(b, cfg, backbone.visual_embedding, text_embeddings)), gt, 1.f,
                              "scr_map.loss_seg"),
            "scr_map.loss_seg");
  t.mask_loss = mask_loss_config(cfg);
  t.queries = b.shape(head.cls_preds[0])[1];
  const int64_t rows = batch * t.queries;
  const int64_t candidates = int64_t(double(t.mask_loss.num_points) * t.mask_loss.oversample_ratio);
  const int64_t randoms =
      t.mask_loss.num_points - int64_t(t.mask_loss.importance_sample_ratio * double(t.mask_loss.num_points));
  t.predictions = int(head.cls_preds.size());
  for (int i = 0; i < t.predictions; ++i) {
    const ValueId cand = g.input(str_cat("points.candidates.", i), {rows, candidates, 2});
    const ValueId rand = g.input(str_cat("points.randoms.", i), {rows, randoms, 2});
    const bool last = i + 1 == t.predictions;
    const std::string prefix = last ? "decode." : str_cat("decode.d", i, ".");
    const ValueId three =
        b.reshape(mask_losses(b, as_f32(b, head.cls_preds[size_t(i)]), as_f32(b, head.mask_preds[size_t(i)]), gt,
                              cand, rand, t.mask_loss, str_cat("decode_head.loss.", i)),
                  {3, 1});
    const char* kinds[] = {"loss_cls", "loss_mask", "loss_dice"};
    for (int k = 0; k < 3; ++k) name_loss(b.slice_rows(three, k, k + 1), prefix + kinds[k]);
  }
  // mmseg's _parse_losses: the sum of every loss (a product with ones, which has a backward rule), or with the
  // trainer's weights.
  const auto n = int64_t(parts.size());
  const ValueId all = b.reshape(b.concat(parts, 0, "loss.parts"), {1, n});
  ValueId weights_of_parts;
  if (options.loss_weights_input) {
    weights_of_parts = g.input("loss.weights", {1, n});
  } else {
    Tensor ones = Tensor::empty({1, n}, DType::f32);
    for (int64_t i = 0; i < n; ++i) ones.data<float>()[i] = 1.f;
    weights_of_parts = g.constant("loss.ones", ones);  // f32 in any storage type, as the losses
  }
  t.total_loss = b.linear(all, weights_of_parts, graph::kNoValue, "loss.total");
  g.mark_output(t.total_loss);

  for (ValueId v = 0; v < ValueId(g.values().size()); ++v) {
    const graph::Value& value = g.value(v);
    if (value.kind == graph::ValueKind::weight && value.alias_of == graph::kNoValue && is_floating(value.dtype) &&
        is_trainable(value.name))
      t.parameters.push_back(v);
  }
  t.forward_nodes = g.nodes().size();
  t.dropout_seed = b.dropout_seed();
  const ValueId seed = g.constant("loss.total.grad_seed", Tensor::from_vector(std::vector<float>{1.f}, {1, 1}));
  BackwardOptions backward;
  backward.recompute = options.recompute;
  MFUSER_CHECK(!options.zero1 || data_parallel, "training graph: ZeRO-1 needs a group communicator (a launch)");
  std::optional<GradientBuckets> buckets;
  if (data_parallel) {
    buckets.emplace(b, *options.comm,
                    options.zero1 ? GradientReduction::reduce_scatter : GradientReduction::all_reduce,
                    options.bucket_bytes);
    backward.on_complete = [&](ValueId param, ValueId grad) { buckets->add(param, grad); };
  }
  t.gradients = build_backward(b, tape, {{t.total_loss, seed}}, t.parameters, backward);
  if (buckets) {
    buckets->finish();
    t.buckets = buckets->buckets();
  }
  return t;
}

void set_dropout_seed(graph::Executor& executor, const TrainingGraph& graph, uint64_t seed) {
  if (graph.dropout_seed == graph::kNoValue) return;
  executor.set_input(graph.graph->value(graph.dropout_seed).name,
                     Tensor::from_vector(std::vector<int64_t>{int64_t(seed)}, {1}));
}

std::vector<float> loss_weights(const TrainingGraph& graph, const kernels::MaskLossCounts& local,
                                const kernels::MaskLossCounts& group_mean) {
  MFUSER_CHECK(group_mean.class_weight_sum > 0, "loss_weights: the group's class-weight sum is ",
               group_mean.class_weight_sum);
  const double cls = local.class_weight_sum / group_mean.class_weight_sum;
  const double masks = std::max(local.positives, 1.0) / std::max(group_mean.positives, 1.0);
  std::vector<float> weights;
  for (const auto& [name, value] : graph.losses) {
    if (name.ends_with("loss_cls")) weights.push_back(float(cls));
    else if (name.ends_with("loss_mask") || name.ends_with("loss_dice")) weights.push_back(float(masks));
    else weights.push_back(1.f);
  }
  return weights;
}

}  // namespace mfuser::model
