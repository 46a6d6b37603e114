// The tqdm decode head (Mask2Former-style, text queries): the pixel decoder (deformable-attention encoder over
// three levels with cross-attention to the text, FPN, mask features), the masked-attention transformer
// decoder with a prediction before its first layer and after each layer, and the semantic output.
// Token sequences are batch-first [B, L, C] here (the official modules are sequence-first).
#include <array>
#include <vector>

#include "graph/model/layers.h"
#include "graph/model/modules.h"
#include "kernels/attn_mask/attn_mask.h"
#include "kernels/layernorm/layernorm.h"
#include "kernels/layout/layout.h"
#include "kernels/posenc/posenc.h"

namespace mfuser::model {

namespace {

using Ins = std::span<const Tensor>;
using Outs = std::span<Tensor>;
using kernels::Activation;

constexpr float kLnEps = 1e-5f;  // nn.LayerNorm's default, every norm of the head

struct Level {
  int64_t h, w;
  int64_t size() const { return h * w; }
};

// mmcv ConvModule: conv (stride 1, 'same' padding) -> GroupNorm -> optional ReLU, output named `prefix`.
ValueId conv_module(Builder& b, const DecodeHeadConfig& dh, ValueId x, const std::string& prefix, int kernel,
                    bool has_bias, bool relu) {
  ValueId y = b.conv2d(x, prefix + ".conv", dh.feat_channels, kernel, 1, kernel / 2, has_bias);
  y = b.groupnorm(y, prefix + ".gn", dh.gn_groups);
  return relu ? b.activation(y, Activation::relu, prefix) : name_output(b, y, prefix);
}

// The sine positional encoding of an h x w map in token layout [B, h*w, 2F], computed at build time.
ValueId sine_pos_tokens(Builder& b, int64_t batch, int64_t feats, Level l, const std::string& name) {
  Tensor grid = Tensor::empty({batch, 2 * feats, l.h, l.w}, DType::f32);
  kernels::posenc(grid);
  Tensor tokens = Tensor::empty({batch, l.size(), 2 * feats}, DType::f32);
  const int perm[] = {0, 2, 1};
  kernels::permute(grid.reshape({batch, 2 * feats, l.size()}), tokens, perm);
  return b.constant(name, std::move(tokens));
}

// Row i of an embedding table [n, C] as a [C] vector (a free view).
ValueId table_row(Builder& b, ValueId table, int64_t i) {
  return b.reshape(b.slice_rows(table, i, i + 1), {b.shape(table)[1]});
}

// mmcv MultiheadAttention: identity + attn(query + query_pos, key + key_pos, value), output named `prefix`.
// The callers add the positions (query_with_pos, key_with_pos) so that a key shared by layers is formed once.
ValueId mmcv_attention(Builder& b, const std::string& prefix, ValueId identity, ValueId query_with_pos,
                       ValueId key_with_pos, ValueId value, int64_t heads, ValueId bool_mask = kNoValue) {
  const ValueId out =
      multihead_attention(b, prefix + ".attn", query_with_pos, key_with_pos, value, heads, false, bool_mask);
  return b.add(identity, out, prefix);
}

// mmcv FFN (num_fcs 2, ReLU) with its residual: x + layers.1(relu(layers.0.0(x))); the hidden width is the
// checkpoint's (the layer-level feedforward_channels overrides ffn_cfgs in mmcv 1.x).
ValueId ffn(Builder& b, ValueId x, const std::string& prefix, int64_t default_hidden) {
  const int64_t c = b.shape(x)[-1];
  const int64_t hidden = b.stored_dim(prefix + ".layers.0.0.weight", 0, default_hidden);
  ValueId y = b.linear(x, prefix + ".layers.0.0", hidden);
  y = b.linear(b.activation(y, Activation::relu, prefix + ".layers.0.1"), prefix + ".layers.1", c);
  return b.add(x, y, prefix);
}

// mmcv MultiScaleDeformableAttention with its residual: offsets and weights from query + pos, values from
// value_proj(query) (no position), bilinear sampling at reference + offset / (w, h) of each level.
ValueId deformable_attention(Builder& b, const DecodeHeadConfig& dh, const std::string& p, ValueId x,
                             ValueId query_pos, const std::vector<Level>& levels, ValueId ref_points,
                             ValueId inv_level_size) {
  const Shape xs = b.shape(x);
  const int64_t batch = xs[0], s = xs[1], c = xs[2];
  const int64_t heads = dh.num_heads, nl = dh.num_levels, np = dh.num_points;
  const ValueId q = b.add(x, query_pos, p + ".query_pos");
  const ValueId value = b.reshape(b.linear(x, p + ".value_proj", c), {batch, s, heads, c / heads});

  ValueId offsets = b.linear(q, p + ".sampling_offsets", heads * nl * np * 2);
  offsets = b.reshape(offsets, {batch, s, heads, nl, np, 2});
  // offsets / (w_l, h_l) as a product with the reciprocals: exact for power-of-two level sizes (16, 32, 64 at
  // 512 crops; 2, 4, 8 in the tiny config), within an ulp of the offset otherwise.
  const ValueId locations =
      b.add(b.mul(offsets, inv_level_size, p + ".offsets_scaled"), ref_points, p + ".sampling_locations");

  ValueId weights = b.linear(q, p + ".attention_weights", heads * nl * np);
  weights = b.softmax(b.reshape(weights, {batch, s, heads, nl * np}), kNoValue, p + ".attention_weights_softmax");
  weights = b.reshape(weights, {batch, s, heads, nl, np});

  std::vector<std::array<int64_t, 2>> shapes;
  for (const Level& l : levels) shapes.push_back({l.h, l.w});
  const ValueId sampled = b.msdeform_attn(value, shapes, locations, weights, p + ".sample");
  return b.add(b.linear(sampled, p + ".output_proj", c), x, p);
}

// Reference points (pixel centres ((x + 0.5) / w, (y + 0.5) / h) of every level's pixels, the same for every
// level they sample: valid ratios are 1) as [S, 1, 1, 1, 2], and 1 / (w_l, h_l) as [L, 1, 2]. The oracle's
// ((x + 0.5) * stride) / (w * stride) rounds to the same floats: the strides are powers of two.
std::array<ValueId, 2> sampling_constants(Builder& b, const std::vector<Level>& levels, const std::string& name) {
  std::vector<float> ref, inv;
  for (const Level& l : levels) {
    for (int64_t y = 0; y < l.h; ++y)
      for (int64_t x = 0; x < l.w; ++x)
        ref.insert(ref.end(), {(float(x) + 0.5f) / float(l.w), (float(y) + 0.5f) / float(l.h)});
    inv.insert(inv.end(), {1.f / float(l.w), 1.f / float(l.h)});
  }
  const auto s = int64_t(ref.size() / 2), nl = int64_t(levels.size());
  return {b.constant(name + ".reference_points", Tensor::from_vector(ref, {s, 1, 1, 1, 2})),
          b.constant(name + ".inv_level_size", Tensor::from_vector(inv, {nl, 1, 2}))};
}

struct PixelDecoderOutputs {
  ValueId mask_feature;          // [B, C, 4g, 4g]
  std::vector<ValueId> memory;   // per level, low to high resolution: [B, h*w, C] tokens
  std::vector<Level> levels;
  std::vector<ValueId> pos;      // per level: the sine encoding [B, h*w, C] (shared with the decoder)
};

PixelDecoderOutputs pixel_decoder(Builder& b, const ModelConfig& cfg, const std::array<ValueId, 4>& feats,
                                  ValueId texts) {
  const DecodeHeadConfig& dh = cfg.decode_head;
  const std::string p = "decode_head.pixel_decoder";
  const int64_t batch = b.shape(feats[0])[0], c = dh.feat_channels;
  const int num_inputs = int(feats.size()), nl = dh.num_levels;
  MFUSER_CHECK(2 * dh.pos_feats == c, "decode head: 2 x pos_feats (", dh.pos_feats, ") must be feat_channels (", c,
               ")");

  // input_convs[i] projects feats[3 - i]: the encoder's levels run from low to high resolution.
  PixelDecoderOutputs out;
  std::vector<ValueId> maps, level_pos;
  const ValueId level_encoding = b.param(p + ".level_encoding.weight", {nl, c});
  for (int i = 0; i < nl; ++i) {
    const ValueId feat = feats[size_t(num_inputs - 1 - i)];
    const Level l{b.shape(feat)[2], b.shape(feat)[3]};
    const ValueId proj = conv_module(b, dh, feat, str_cat(p, ".input_convs.", i), 1, true, false);
    maps.push_back(b.reshape(proj, {batch, c, l.size()}));
    out.pos.push_back(sine_pos_tokens(b, batch, dh.pos_feats, l, str_cat(p, ".positional_encoding.", i)));
    level_pos.push_back(b.add(out.pos.back(), table_row(b, level_encoding, i), str_cat(p, ".level_pos.", i)));
    out.levels.push_back(l);
  }
  ValueId x = b.permute(b.concat(maps, 2, p + ".encoder_input_maps"), {0, 2, 1}, p + ".encoder_input");
  const ValueId pos = b.concat(level_pos, 1, p + ".level_pos");
  const auto [ref_points, inv_level_size] = sampling_constants(b, out.levels, p + ".encoder");

  // The key of every cross-attention: the projected text tokens plus their learned positions.
  const int64_t classes = b.shape(texts)[1];
  const ValueId text_feat = b.linear(texts, p + ".text_proj", c);
  const ValueId text_key =
      b.add(text_feat, b.param(p + ".text_pos_embed.weight", {classes, c}), p + ".text_with_pos");

  // Post-norm layers: (deformable self_attn, norm, cross_attn to the text, norm, ffn, norm).
  for (int j = 0; j < dh.encoder_layers; ++j) {
    const std::string l = str_cat(p, ".encoder.layers.", j);
    x = deformable_attention(b, dh, l + ".attentions.0", x, pos, out.levels, ref_points, inv_level_size);
    x = b.layernorm(x, l + ".norms.0", kLnEps);
    const ValueId q = b.add(x, pos, l + ".attentions.1.query_pos");
    x = mmcv_attention(b, l + ".attentions.1", x, q, text_key, text_feat, dh.num_heads);
    x = b.layernorm(x, l + ".norms.1", kLnEps);
    x = name_output(b, b.layernorm(ffn(b, x, l + ".ffns.0", dh.encoder_ffn), l + ".norms.2", kLnEps), l);
  }
  // The encoder returns post_norm of every layer's output; only the last one is used.
  const ValueId memory = name_output(b, b.layernorm(x, p + ".encoder.post_norm", kLnEps), p + ".encoder");

  // Per-level memories: tokens for the transformer decoder, maps for the FPN and the recorded outputs.
  std::vector<int64_t> sizes;
  for (const Level& l : out.levels) sizes.push_back(l.size());
  out.memory = b.split(memory, sizes, 1, p + ".memory_tokens");
  const auto flat = b.split(b.permute(memory, {0, 2, 1}, p + ".memory_t"), sizes, 2, p + ".memory_flat");
  std::vector<ValueId> outs;
  for (int i = 0; i < nl; ++i) {
    const Level& l = out.levels[size_t(i)];
    outs.push_back(b.reshape(flat[size_t(i)], {batch, c, l.h, l.w}, str_cat(p, ".memory.", i)));
  }

  // FPN on the remaining higher-resolution inputs: lateral conv + upsampled coarser output, output conv.
  for (int i = num_inputs - nl - 1; i >= 0; --i) {
    const ValueId cur = conv_module(b, dh, feats[size_t(i)], str_cat(p, ".lateral_convs.", i), 1, false, false);
    const ValueId up =
        b.resize_bilinear(outs.back(), b.shape(cur)[2], b.shape(cur)[3], str_cat(p, ".output_convs.", i, ".upsampled"));
    const ValueId sum = b.add(cur, up, str_cat(p, ".output_convs.", i, ".input"));
    outs.push_back(conv_module(b, dh, sum, str_cat(p, ".output_convs.", i), 3, false, true));
  }
  out.mask_feature = b.conv2d(outs.back(), p + ".mask_feature", c, 1, 1, 0, true);
  return out;
}

struct Prediction {
  ValueId cls, mask, attn_mask;  // attn_mask: kNoValue after the last layer
};

// forward_head: post_norm, cls_embed, mask_embed . mask features; the attention mask for the next layer from
// the masks resized to that layer's level (sigmoid < 0.5 masked, fully masked rows unmasked).
// mask_feature: [B, C, H0 * W0] (H0 x W0: `mask_size`).
Prediction predict(Builder& b, int j, int64_t classes, ValueId x, ValueId mask_feature, Level mask_size,
                   const Level* next_level) {
  const std::string h = "decode_head", tag = str_cat(h, ".prediction.", j);
  const int64_t batch = b.shape(mask_feature)[0], c = b.shape(mask_feature)[1], queries = b.shape(x)[1];
  const ValueId n = b.layernorm(x, h + ".transformer_decoder.post_norm", kLnEps, tag + ".post_norm");
  Prediction out;
  out.cls = b.linear(n, h + ".cls_embed", classes + 1, true, str_cat(h, ".cls_pred.", j));  // + "no object"
  ValueId e = n;
  for (int k : {0, 2, 4}) {
    e = b.linear(e, str_cat(h, ".mask_embed.", k), c, true, str_cat(tag, ".mask_embed.", k));
    if (k < 4) e = b.activation(e, Activation::relu, str_cat(tag, ".mask_embed.", k + 1));
  }
  // einsum("bqc,bchw->bqhw")
  const ValueId masks = b.matmul(e, mask_feature, false, tag + ".masks");
  out.mask = b.reshape(masks, {batch, queries, mask_size.h, mask_size.w}, str_cat(h, ".mask_pred.", j));
  out.attn_mask = kNoValue;
  if (next_level) {
    const ValueId resized = b.resize_bilinear(out.mask, next_level->h, next_level->w, tag + ".resized");
    const Shape shape{batch, 1, queries, next_level->size()};  // one mask for all heads
    out.attn_mask = b.node("attn_mask", tag + ".attn_mask", {b.reshape(resized, shape)}, shape,
                           [](Ins in, Outs o) { kernels::attn_mask(in[0], o[0]); }, DType::boolean);
  }
  return out;
}

}  // namespace

HeadOutputs build_decode_head(Builder& b, const ModelConfig& cfg, const std::array<ValueId, 4>& features,
                              ValueId text_embeddings) {
  const DecodeHeadConfig& dh = cfg.decode_head;
  const std::string h = "decode_head";
  const int64_t c = dh.feat_channels, classes = cfg.num_classes;
  const PixelDecoderOutputs pd = pixel_decoder(b, cfg, features, text_embeddings);
  const int nl = dh.num_levels;

  // Decoder memory per level: pixel-decoder tokens + level_embed, keys with the sine positions added.
  const ValueId level_embed = b.param(h + ".level_embed.weight", {nl, c});
  std::vector<ValueId> memory, keys;
  for (int i = 0; i < nl; ++i) {
    memory.push_back(b.add(pd.memory[size_t(i)], table_row(b, level_embed, i), str_cat(h, ".decoder_input.", i)));
    keys.push_back(b.add(memory.back(), pd.pos[size_t(i)], str_cat(h, ".decoder_key.", i)));
  }

  // The queries are the projected class-name embeddings; query_embed is only their position.
  ValueId x = b.linear(text_embeddings, h + ".text_proj.0", c);
  x = b.linear(b.activation(x, Activation::relu, h + ".text_proj.1"), h + ".text_proj.2", c);
  x = name_output(b, x, h + ".text_proj");
  const ValueId query_pos = b.param(h + ".query_embed.weight", {b.shape(x)[1], c});

  const Shape fs = b.shape(pd.mask_feature);
  const Level mask_size{fs[2], fs[3]};
  const ValueId mask_feature = b.reshape(pd.mask_feature, {fs[0], fs[1], mask_size.size()});
  HeadOutputs out;
  Prediction pred = predict(b, 0, classes, x, mask_feature, mask_size, &pd.levels[0]);
  for (int j = 0; j < dh.decoder_layers; ++j) {
    const std::string l = str_cat(h, ".transformer_decoder.layers.", j);
    const size_t level = size_t(j % nl);
    out.cls_preds.push_back(pred.cls);
    out.mask_preds.push_back(pred.mask);
    // (cross_attn under the mask, norm, self_attn, norm, ffn, norm)
    const ValueId q = b.add(x, query_pos, l + ".attentions.0.query_pos");
    x = mmcv_attention(b, l + ".attentions.0", x, q, keys[level], memory[level], dh.num_heads, pred.attn_mask);
    x = b.layernorm(x, l + ".norms.0", kLnEps);
    const ValueId qk = b.add(x, query_pos, l + ".attentions.1.query_pos");
    x = mmcv_attention(b, l + ".attentions.1", x, qk, qk, x, dh.num_heads);
    x = b.layernorm(x, l + ".norms.1", kLnEps);
    x = name_output(b, b.layernorm(ffn(b, x, l + ".ffns.0", dh.decoder_ffn), l + ".norms.2", kLnEps), l);
    const bool last = j + 1 == dh.decoder_layers;
    pred = predict(b, j + 1, classes, x, mask_feature, mask_size, last ? nullptr : &pd.levels[size_t((j + 1) % nl)]);
  }
  out.cls_preds.push_back(pred.cls);
  out.mask_preds.push_back(pred.mask);

  // forward_test: einsum("bqc,bqhw->bchw", softmax(cls)[..., :K], sigmoid(masks)) of the last prediction.
  const ValueId probs = b.softmax(pred.cls, kNoValue, h + ".semantic.cls_softmax");
  const ValueId cls = b.split(probs, {classes, b.shape(probs)[2] - classes}, 2, h + ".semantic.cls_split")[0];
  const ValueId cls_t = b.permute(cls, {0, 2, 1}, h + ".semantic.cls_t");
  const ValueId sig = b.activation(b.reshape(pred.mask, {fs[0], b.shape(x)[1], mask_size.size()}),
                                   Activation::sigmoid, h + ".semantic.mask_sigmoid");
  const ValueId sem = b.matmul(cls_t, sig, false, h + ".semantic.flat");
  out.semantic = b.reshape(sem, {fs[0], classes, mask_size.h, mask_size.w}, h + ".semantic");
  return out;
}

}  // namespace mfuser::model
