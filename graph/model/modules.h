// The MFuser-CLIP modules, each appending its nodes to a graph through a Builder. Names of nodes and weights
// are the official module names ("backbone.adapter.7", "decode_head.pixel_decoder.encoder.layers.0"), so a
// node's output can be compared with the oracle's forward hook of the same name.
//
// Layout convention: batch-first everywhere ([B, L, C] token sequences, [B, C, H, W] maps); where the oracle
// records a sequence-first tensor ([L, B, C]) the parity tests transpose it.
#pragma once

#include <array>
#include <vector>

#include "graph/model/builder.h"
#include "graph/model/config.h"

namespace mfuser::model {

// ---- backbone (backbone.cpp): CLIP visual ViT + DINOv2 + MVFuser adapters + FPN + embeddings ----
struct BackboneOutputs {
  std::array<ValueId, 4> features;  // [B, 2W, 4g, 4g], [B, 2W, 2g, 2g], [B, 2W, g, g], [B, 2W, g/2, g/2]
  ValueId global_embedding;         // [B, 1, output_dim]   (value "backbone.global_embedding")
  ValueId visual_embedding;         // [B, output_dim, g, g] (value "backbone.visual_embedding")
};
// image: [B, 3, H, W] normalized with CLIP mean/std.
BackboneOutputs build_backbone(Builder& b, const ModelConfig& cfg, ValueId image);

// One MVFuser block (mvfuser.cpp), shared by the backbone adapters (d = vision width) and MTEnhancer
// (d = context decoder width): x [B, L, d] -> [B, L, d]; `prefix` is the module name ("backbone.adapter.3").
ValueId build_mvfuser(Builder& b, const ModelConfig& cfg, ValueId x, const std::string& prefix);

// ---- text branch (text.cpp) ----
// The CLIP text encoder with the learned `contexts`: [1, num_classes, embed_dim] (value "text_encoder").
// It does not depend on the image: the model runs it once at load and feeds the result as a constant.
ValueId build_text_encoder(Builder& b, const ModelConfig& cfg, ValueId token_ids /* i64 [num_classes, ctx_len] */);
// ContextDecoder + gamma: text [B, K, E] refined by the visual context -> "text_embeddings" [B, K, E].
ValueId build_context_decoder(Builder& b, const ModelConfig& cfg, ValueId text, ValueId global_embedding,
                              ValueId visual_embedding);

// ---- decode head (head.cpp) ----
struct HeadOutputs {
  std::vector<ValueId> cls_preds;   // per prediction: [B, Q, num_classes + 1]  ("decode_head.cls_pred.i")
  std::vector<ValueId> mask_preds;  // per prediction: [B, Q, 4g, 4g]           ("decode_head.mask_pred.i")
  ValueId semantic;                 // [B, num_classes, 4g, 4g]: softmax(cls)[..., :K] x sigmoid(masks)
};
HeadOutputs build_decode_head(Builder& b, const ModelConfig& cfg, const std::array<ValueId, 4>& features,
                              ValueId text_embeddings);

}  // namespace mfuser::model
