// The text branch: CLIP's text transformer with the learned prompt `contexts` (official
// CLIPTextContextEncoder), and the ContextDecoder (MTEnhancer layers) that refines the class embeddings with
// the image, finished by `text + gamma * diff`.
#include <algorithm>
#include <vector>

#include "graph/model/layers.h"
#include "graph/model/modules.h"

namespace mfuser::model {

namespace {

// x [1, ...] repeated n times along dim 0 (torch's expand, materialized): a concat of n copies, whose
// backward sums the copies' gradients.
ValueId repeat_rows(Builder& b, ValueId x, int64_t n, const std::string& name) {
  MFUSER_CHECK(b.shape(x)[0] == 1, "repeat_rows '", name, "': ", b.shape(x).str(), " does not start with 1");
  return b.concat(std::vector<ValueId>(size_t(n), x), 0, name);
}

// LayerNorm then Linear, the head of memory_proj / text_proj / out_proj (nn.Sequential: .0 LN, .1 Linear).
ValueId norm_linear(Builder& b, ValueId x, const std::string& prefix, int64_t out_features) {
  return b.linear(b.layernorm(x, prefix + ".0", 1e-5f), prefix + ".1", out_features);
}

// One MTEnhancer layer: x [B, K, W] text tokens, memory [B, M, W] projected visual context.
ValueId mt_enhancer(Builder& b, const ModelConfig& cfg, ValueId x, ValueId memory, const std::string& p) {
  const int64_t k = b.shape(x)[1], w = b.shape(x)[2], m = b.shape(memory)[1];
  const int64_t heads = cfg.context_decoder.heads;

  // Self-attention with separate q/k/v projections without bias; scale (W / heads)^-0.5, proj with bias.
  const ValueId h = b.layernorm(x, p + ".norm1", 1e-5f);
  const auto heads_of = [&](const char* proj) {
    const std::string name = p + ".self_attn." + proj;
    return split_heads(b, b.linear(h, name, w, /*has_bias=*/false), heads, name + "_heads");
  };
  const ValueId q = heads_of("q_proj"), kk = heads_of("k_proj"), v = heads_of("v_proj");
  const ValueId attn = b.attention(q, kk, v, p + ".self_attn.sdpa");
  const float drop = float(cfg.context_decoder.dropout);  // training only (Builder::dropout)
  const ValueId sa = b.linear(merge_heads(b, attn, p + ".self_attn.merged"), p + ".self_attn.proj", w);
  x = b.add(x, b.dropout(sa, drop, p + ".self_attn.proj_drop"), p + ".self_attn_residual");

  // MVFuser over [text, visual, text]: the one-directional scan lets the last text copy see the image and
  // the image see the first copy; both text copies of the output are added back.
  const ValueId n2 = b.layernorm(x, p + ".norm2", 1e-5f);
  const ValueId sequence = b.concat({n2, memory, n2}, 1, p + ".cross_attn.input");
  const ValueId fused = build_mvfuser(b, cfg, sequence, p + ".cross_attn");
  const auto parts = b.split(fused, {k, m, k}, 1, p + ".cross_attn.split");
  x = b.add(b.add(x, parts[0], p + ".cross_attn_residual.first"), parts[2], p + ".cross_attn_residual");

  // MLP with exact GELU (nn.GELU) and a dropout inside (mlp.2) and after it.
  ValueId y = b.linear(b.layernorm(x, p + ".norm3", 1e-5f), p + ".mlp.0", 4 * w);
  y = b.dropout(b.activation(y, kernels::Activation::gelu, p + ".mlp.1"), drop, p + ".mlp.2");
  y = b.dropout(b.linear(y, p + ".mlp.3", w), drop, p + ".dropout");
  return b.add(x, y, p);
}

}  // namespace

ValueId build_text_encoder(Builder& b, const ModelConfig& cfg, ValueId token_ids) {
  const TextConfig& t = cfg.text;
  const graph::Value ids = b.graph().value(token_ids);  // a copy: building adds values
  MFUSER_CHECK(ids.bound.defined() && ids.dtype == DType::i64 && ids.shape.ndim() == 2 &&
                   ids.shape[1] == t.context_length,
               "text encoder: token ids '", ids.name, "' must be a constant i64 [classes, ", t.context_length,
               "], got ", ids.shape.str());
  const int64_t classes = ids.shape[0], n1 = t.context_length, n2 = t.n_contexts, len = n1 + n2, c = t.width;
  // The EOT row of each class: argmax of its ids (EOT has the largest id; the first maximum, as torch.argmax),
  // moved n2 places right by the inserted contexts. The ids are constants, so this is settled here.
  std::vector<int64_t> eot_rows(static_cast<size_t>(classes));
  const int64_t* id = ids.bound.data<int64_t>();
  for (int64_t i = 0; i < classes; ++i)
    eot_rows[size_t(i)] = i * len + (std::max_element(id + i * n1, id + (i + 1) * n1) - (id + i * n1)) + n2;

  // [SOT, contexts (learned, shared by all classes), name tokens, EOT, padding] + positional_embedding.
  const ValueId table = b.param("text_encoder.token_embedding.weight", {t.vocab_size, c});
  const ValueId emb = b.embedding(token_ids, table, "text_encoder.token_embedding");
  const auto sot_rest = b.split(emb, {1, n1 - 1}, 1, "text_encoder.token_embedding.split");
  const ValueId ctx = repeat_rows(b, b.param("contexts", {1, n2, c}), classes, "text_encoder.contexts");
  ValueId x = b.concat({sot_rest[0], ctx, sot_rest[1]}, 1, "text_encoder.prompt");
  x = b.add(x, b.param("text_encoder.positional_embedding", {len, c}), "text_encoder.prompt_pos");

  for (int i = 0; i < t.layers; ++i) {
    const std::string block = str_cat("text_encoder.transformer.resblocks.", i);
    b.begin_checkpoint(block);
    x = clip_residual_block(b, x, t.heads, block, /*causal=*/true);
    b.end_checkpoint();
  }
  x = b.layernorm(x, "text_encoder.ln_final", 1e-5f);

  // Gather the EOT rows of the flattened tokens (their positions are known at build time: row views joined
  // by one concat, which carries the gradient back to `contexts` in training), then @ text_projection.
  const ValueId flat = b.reshape(x, {classes * len, c});
  std::vector<ValueId> eot_tokens;
  for (size_t k = 0; k < eot_rows.size(); ++k)
    eot_tokens.push_back(b.slice_rows(flat, eot_rows[k], eot_rows[k] + 1, str_cat("text_encoder.eot.", k)));
  const ValueId eot = b.concat(eot_tokens, 0, "text_encoder.eot");
  const ValueId proj = b.param("text_encoder.text_projection", {c, t.embed_dim});
  return b.matmul(b.reshape(eot, {1, classes, c}), b.reshape(proj, {1, c, t.embed_dim}), false, "text_encoder");
}

ValueId build_context_decoder(Builder& b, const ModelConfig& cfg, ValueId text, ValueId global_embedding,
                              ValueId visual_embedding) {
  const Shape vs = b.shape(visual_embedding);
  const int64_t batch = vs[0], dim = vs[1], width = cfg.context_decoder.width;
  MFUSER_CHECK(b.shape(text).ndim() == 3 && b.shape(text)[0] == batch && b.shape(text)[2] == dim,
               "context decoder: text ", b.shape(text).str(), " must be [", batch, ", classes, ", dim, "]");

  // Visual context: [global token, the g*g visual tokens] of the backbone embeddings.
  const ValueId tokens =
      b.permute(b.reshape(visual_embedding, {batch, dim, vs[2] * vs[3]}), {0, 2, 1}, "context_decoder.visual_tokens");
  const ValueId context = b.concat({global_embedding, tokens}, 1, "context_decoder.visual_context");

  const ValueId projected = norm_linear(b, context, "context_decoder.memory_proj", width);
  const ValueId memory = name_output(b, b.layernorm(projected, "context_decoder.memory_proj.2", 1e-5f),
                                     "context_decoder.memory_proj");
  ValueId x = name_output(b, norm_linear(b, text, "context_decoder.text_proj", width), "context_decoder.text_proj");
  for (int i = 0; i < cfg.context_decoder.layers; ++i)
    x = mt_enhancer(b, cfg, x, memory, str_cat("context_decoder.decoder.", i));
  const ValueId diff = name_output(
      b, name_output(b, norm_linear(b, x, "context_decoder.out_proj", dim), "context_decoder.out_proj"),
      "context_decoder");

  // text + gamma * diff (gamma: one factor per channel).
  const ValueId scaled = b.mul(diff, b.param("gamma", {dim}), "text_embeddings.gamma_diff");
  return b.add(text, scaled, "text_embeddings");
}

}  // namespace mfuser::model
