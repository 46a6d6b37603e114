// The MFuser-CLIP backbone: CLIP visual ViT and DINOv2 side by side, fused after every block by an MVFuser
// adapter; a 4-level FPN on the fused features at out_indices; CLIP-space embeddings at the end.
#include <algorithm>
#include <array>
#include <functional>

#include "graph/model/backbone_stages.h"
#include "graph/model/layers.h"
#include "kernels/resize/resize.h"

namespace mfuser::model {

namespace {

using kernels::Activation;

// DINOv2 block: pre-LN with eps 1e-6, fused qkv with bias, LayerScale on both branches, exact GELU MLP.
ValueId dino_block(Builder& b, ValueId x, int heads, const std::string& p) {
  const int64_t c = b.shape(x)[-1];
  ValueId h = b.layernorm(x, p + ".norm1", 1e-6f);
  h = fused_self_attention(b, h, b.param(p + ".attn.qkv.weight", {3 * c, c}), b.param(p + ".attn.qkv.bias", {3 * c}),
                           heads, p + ".attn");
  h = b.mul(b.linear(h, p + ".attn.proj", c), b.param(p + ".ls1.gamma", {c}), p + ".ls1");
  x = b.add(x, h, p + ".attn_residual");
  h = b.layernorm(x, p + ".norm2", 1e-6f);
  h = b.linear(h, p + ".mlp.fc1", b.stored_dim(p + ".mlp.fc1.weight", 0, 4 * c));
  h = b.activation(h, Activation::gelu, p + ".mlp.act");
  h = b.mul(b.linear(h, p + ".mlp.fc2", c), b.param(p + ".ls2.gamma", {c}), p + ".ls2");
  return b.add(x, h, p);
}

// Non-overlapping patch conv -> tokens [B, gh*gw, C] (conv output flattened and transposed, as both towers do).
ValueId patch_tokens(Builder& b, ValueId image, const std::string& conv, int64_t width, int patch, bool has_bias,
                     const std::string& name) {
  const ValueId maps = b.conv2d(image, conv, width, patch, patch, 0, has_bias);
  const Shape ms = b.shape(maps);
  return b.permute(b.reshape(maps, {ms[0], ms[1], ms[2] * ms[3]}), {0, 2, 1}, name);
}

// [cls; tokens]: `cls` ([C] or [1, 1, C]) is broadcast over the batch by adding it to zeros, which is exactly
// what CLIP does (class_embedding + zeros(B, 1, C)) and equals DINOv2's cls_token.expand.
ValueId prepend_class_token(Builder& b, ValueId tokens, ValueId cls, ValueId zeros, const std::string& name) {
  return b.concat({b.add(zeros, cls, name + ".cls"), tokens}, 1, name);
}

// A stored table of grid-position rows [g0*g0, C] resampled to the image grid, as rows [gh*gw, C].
ValueId resample_grid_rows(Builder& b, ValueId rows, int64_t g0, int64_t gh, int64_t gw, const std::string& name,
                           const std::function<void(const Tensor&, Tensor&)>& resize) {
  const int64_t c = b.shape(rows)[-1];
  const ValueId map = b.permute(b.reshape(rows, {1, g0, g0, c}), {0, 3, 1, 2}, name + ".map");
  const ValueId resized = b.node("resize", name + ".resize", {map}, {1, c, gh, gw},
                                 [resize](std::span<const Tensor> in, std::span<Tensor> out) { resize(in[0], out[0]); });
  return b.reshape(b.permute(resized, {0, 2, 3, 1}, name), {gh * gw, c});
}

}  // namespace

BackboneStreams build_backbone_embed(Builder& b, const ModelConfig& cfg, ValueId image) {
  const std::string p = "backbone";
  const Shape is = b.shape(image);
  MFUSER_CHECK(is.ndim() == 4 && is[1] == 3, "backbone: image ", is.str(), " is not [B, 3, H, W]");
  const int64_t batch = is[0], c = cfg.vision.width, patch = cfg.patch_size;
  const int64_t gh = is[2] / patch, gw = is[3] / patch;
  const int64_t g0 = cfg.grid();  // the grid the stored positional tables were made for
  const ValueId zeros = b.constant(p + ".zeros", Tensor::zeros({batch, 1, c}, DType::f32));

  // DINOv2 input: the same pixels re-normalized from CLIP's mean/std to ImageNet's (both in 0..255 units).
  // Upstream computes ((x * clip_std + clip_mean) - in_mean) / in_std; folded into one per-channel affine
  // (x * s + t), which differs from it by rounding only.
  constexpr std::array<double, 3> clip_mean = {0.48145466, 0.4578275, 0.40821073};
  constexpr std::array<double, 3> clip_std = {0.26862954, 0.26130258, 0.27577711};
  constexpr std::array<double, 3> in_mean = {0.485, 0.456, 0.406}, in_std = {0.229, 0.224, 0.225};
  std::vector<float> s(3), t(3);
  for (size_t k = 0; k < 3; ++k) {
    s[k] = float(clip_std[k] / in_std[k]);
    t[k] = float((clip_mean[k] - in_mean[k]) / in_std[k]);
  }
  ValueId dino_in = b.mul(image, b.constant(p + ".dino_input.scale", Tensor::from_vector(s, {3, 1, 1})),
                          p + ".dino_input.scaled");
  dino_in = b.add(dino_in, b.constant(p + ".dino_input.shift", Tensor::from_vector(t, {3, 1, 1})),
                  p + ".dino_input");

  // DINOv2 tokens: patch_embed (conv with bias), cls_token, pos_embed.
  BackboneStreams out;
  out.dino_x = patch_tokens(b, dino_in, p + ".dinov2.patch_embed.proj", c, int(patch), true,
                            p + ".dinov2.patch_embed");
  out.dino_x = prepend_class_token(b, out.dino_x, b.param(p + ".dinov2.cls_token", {1, 1, c}), zeros,
                                   p + ".dinov2.tokens");
  ValueId dino_pos = b.param(p + ".dinov2.pos_embed", {1, g0 * g0 + 1, c});
  if (gh * gw != g0 * g0 || is[2] != is[3]) {
    // Upstream's interpolate_pos_encoding: bicubic by scale factor (g + 0.1) / g0, not to a target size.
    const double sh = (double(gh) + 0.1) / double(g0), sw = (double(gw) + 0.1) / double(g0);
    const ValueId rows = b.reshape(dino_pos, {g0 * g0 + 1, c});
    const ValueId grid = resample_grid_rows(
        b, b.slice_rows(rows, 1, g0 * g0 + 1), g0, gh, gw, p + ".dinov2.pos_embed.grid",
        [sh, sw](const Tensor& src, Tensor& dst) { kernels::resize_bicubic(src, dst, sh, sw); });
    dino_pos = b.concat({b.slice_rows(rows, 0, 1), grid}, 0, p + ".dinov2.pos_embed.resized");
  }
  out.dino_x = b.add(out.dino_x, dino_pos, p + ".dinov2.embedded");
  // dinov2.norm (and mask_token) are in the checkpoint but MFuser never applies them.
  b.weights().ignore(p + ".dinov2.norm.weight", {c});
  b.weights().ignore(p + ".dinov2.norm.bias", {c});
  b.weights().ignore(p + ".dinov2.mask_token", {1, c});

  // CLIP tokens: conv1 (no bias), class token, positional embedding, ln_pre.
  out.clip_x = patch_tokens(b, image, p + ".conv1", c, int(patch), false, p + ".conv1.tokens");
  const ValueId class_embedding = b.param(p + ".class_embedding", {c});
  out.clip_x = prepend_class_token(b, out.clip_x, class_embedding, zeros, p + ".tokens");
  const ValueId pos = b.param(p + ".positional_embedding", {g0 * g0 + 1, c});
  // Upstream adds class_embedding to the class position too, so token 0 gets it twice.
  const ValueId cls_pos = b.add(b.slice_rows(pos, 0, 1), class_embedding, p + ".cls_pos");
  ValueId spatial_pos = b.slice_rows(pos, 1, g0 * g0 + 1);
  if (gh != g0 || gw != g0)  // upstream resizes at every forward; at the stored grid that is an exact copy
    spatial_pos = resample_grid_rows(b, spatial_pos, g0, gh, gw, p + ".spatial_pos",
                                     [](const Tensor& src, Tensor& dst) { kernels::resize_bilinear(src, dst); });
  out.clip_x = b.add(out.clip_x, b.concat({cls_pos, spatial_pos}, 0, p + ".pos"), p + ".embedded");
  out.clip_x = b.layernorm(out.clip_x, p + ".ln_pre", 1e-5f);
  return out;
}

BackboneStreams build_backbone_layer(Builder& b, const ModelConfig& cfg, const BackboneStreams& in, int layer) {
  const std::string p = "backbone", n = std::to_string(layer);
  const int64_t c = cfg.vision.width, tokens = b.shape(in.clip_x)[1];
  // One checkpoint segment per layer, adapter included: a recomputing backward keeps only the two streams
  // between layers (the adapter's scan activations are as large as a block's).
  b.begin_checkpoint(p + ".layer." + n);
  BackboneStreams out;
  // DropPath rates linspace(0, drop_path_rate, layers) over the blocks.
  const int layers = cfg.vision.layers;
  const float drop_path = layers > 1 ? float(cfg.vision.drop_path_rate) * float(layer) / float(layers - 1) : 0.f;
  const ValueId clip_x = clip_residual_block(b, in.clip_x, cfg.vision.heads, p + ".transformer.resblocks." + n,
                                             /*causal=*/false, drop_path);
  const ValueId dino_x = dino_block(b, in.dino_x, cfg.vision.heads, p + ".dinov2.blocks." + n);
  // t = adapter(cat[proj1(dino), clip] over tokens); dino += proj2(t[:L]); clip += t[L:].
  const std::string f = p + ".fusion." + n;
  const ValueId joint = b.concat({b.linear(dino_x, p + ".adapter_proj1." + n, c), clip_x}, 1, f + ".input");
  const auto halves = b.split(build_mvfuser(b, cfg, joint, p + ".adapter." + n), {tokens, tokens}, 1, f + ".halves");
  out.dino_x = b.add(dino_x, b.linear(halves[0], p + ".adapter_proj2." + n, c), f + ".dinov2_x");
  out.clip_x = b.add(clip_x, halves[1], f + ".clip_x");
  b.end_checkpoint();
  return out;
}

BackboneOutputs build_backbone_outputs(Builder& b, const ModelConfig& cfg, const std::array<BackboneStreams, 4>& taps,
                                       const BackboneStreams& last, int64_t gh, int64_t gw) {
  const std::string p = "backbone";
  const Shape ts = b.shape(last.clip_x);
  const int64_t batch = ts[0], tokens = ts[1], c = ts[2];
  MFUSER_CHECK(tokens == gh * gw + 1, "backbone: ", tokens, " tokens for a ", gh, "x", gw, " grid");

  // Fused maps: cat(dino patch tokens, clip patch tokens) over channels -> [B, 2C, gh, gw].
  std::array<ValueId, 4> maps;
  for (size_t k = 0; k < 4; ++k) {
    const std::string f = p + ".map." + std::to_string(k);
    const ValueId both = b.concat({taps[k].dino_x, taps[k].clip_x}, 2, f + ".cat");
    const ValueId patches = b.split(both, {1, tokens - 1}, 1, f + ".split")[1];
    maps[k] = b.reshape(b.permute(patches, {0, 2, 1}, f), {batch, 2 * c, gh, gw});
  }

  // FPN: 4x (convT, BN with running stats, GELU, convT), 2x (convT), 1x (identity), 1/2x (max pool).
  ValueId f1 = b.conv_transpose2d(maps[0], p + ".fpn1.0", 2 * c);
  f1 = b.activation(b.batchnorm(f1, p + ".fpn1.1", 1e-5f), Activation::gelu, p + ".fpn1.2");
  f1 = b.conv_transpose2d(f1, p + ".fpn1.3", 2 * c);
  const std::array<ValueId, 4> fpn = {name_output(b, f1, p + ".fpn1"),
                                      name_output(b, b.conv_transpose2d(maps[1], p + ".fpn2.0", 2 * c), p + ".fpn2"),
                                      name_output(b, maps[2], p + ".fpn3"), b.maxpool2d(maps[3], p + ".fpn4")};
  BackboneOutputs out;
  for (size_t k = 0; k < 4; ++k) out.features[k] = name_output(b, fpn[k], p + ".features." + std::to_string(k));

  // Embeddings: clip + adapter_proj3(dino), ln_post, @ proj; token 0 global, tokens 1.. the visual map.
  ValueId x = b.add(last.clip_x, b.linear(last.dino_x, p + ".adapter_proj3", c), p + ".embed_input");
  x = b.layernorm(x, p + ".ln_post", 1e-5f);
  const int64_t e = cfg.vision.output_dim;
  x = b.matmul(b.reshape(x, {batch * tokens, c}), b.param(p + ".proj", {c, e}), false, p + ".proj.matmul");
  const auto emb = b.split(b.reshape(x, {batch, tokens, e}), {1, tokens - 1}, 1, p + ".embeddings");
  out.global_embedding = b.reshape(emb[0], {batch, 1, e}, p + ".global_embedding");
  out.visual_embedding = b.permute(b.reshape(emb[1], {batch, gh, gw, e}), {0, 3, 1, 2}, p + ".visual_embedding");
  return out;
}

BackboneOutputs build_backbone(Builder& b, const ModelConfig& cfg, ValueId image) {
  BackboneStreams x = build_backbone_embed(b, cfg, image);
  // As upstream's `if i in out_indices`: the taps come in layer order.
  std::array<BackboneStreams, 4> taps;
  size_t tapped = 0;
  for (int i = 0; i < cfg.vision.layers; ++i) {
    x = build_backbone_layer(b, cfg, x, i);
    if (std::ranges::find(cfg.vision.out_indices, i) != cfg.vision.out_indices.end() && tapped++ < 4)
      taps[tapped - 1] = x;
  }
  MFUSER_CHECK(tapped == 4, "backbone: out_indices name ", tapped, " of ", cfg.vision.layers,
               " layers; the FPN takes 4");
  const Shape is = b.shape(image);
  return build_backbone_outputs(b, cfg, taps, x, is[2] / cfg.patch_size, is[3] / cfg.patch_size);
}

}  // namespace mfuser::model
