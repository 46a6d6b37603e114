#include "graph/model/layers.h"

namespace mfuser::model {

ValueId name_output(Builder& b, ValueId x, const std::string& name) { return b.reshape(x, b.shape(x), name); }

ValueId split_heads(Builder& b, ValueId x, int64_t heads, const std::string& name) {
  const Shape s = b.shape(x);
  MFUSER_CHECK(s.ndim() == 3 && s[2] % heads == 0, "split_heads '", name, "': ", s.str(), " over ", heads, " heads");
  return b.permute(b.reshape(x, {s[0], s[1], heads, s[2] / heads}), {0, 2, 1, 3}, name);
}

ValueId merge_heads(Builder& b, ValueId x, const std::string& name) {
  const Shape s = b.shape(x);
  const ValueId t = b.permute(x, {0, 2, 1, 3}, name);
  return b.reshape(t, {s[0], s[2], s[1] * s[3]});
}

ValueId fused_self_attention(Builder& b, ValueId x, ValueId qkv_weight, ValueId qkv_bias, int64_t heads,
                             const std::string& name, bool causal, ValueId bool_mask) {
  const Shape s = b.shape(x);
  const int64_t c = s[2], dh = c / heads;
  MFUSER_CHECK(dh * heads == c, "'", name, "': width ", c, " is not a multiple of ", heads, " heads");
  // One GEMM, then [B, L, 3, H, D] -> [3, B, H, L, D]: q, k and v are free row views of one permute.
  const ValueId qkv = b.linear(x, qkv_weight, qkv_bias, name + ".qkv");
  const ValueId t = b.permute(b.reshape(qkv, {s[0], s[1], 3, heads, dh}), {2, 0, 3, 1, 4}, name + ".qkv_t");
  const Shape head_shape{s[0], heads, s[1], dh};
  const auto part = [&](int64_t i) { return b.reshape(b.slice_rows(t, i, i + 1), head_shape); };
  const ValueId o = b.attention(part(0), part(1), part(2), name + ".sdpa", causal, bool_mask);
  return merge_heads(b, o, name + ".heads_merged");
}

ValueId multihead_attention(Builder& b, const std::string& prefix, ValueId query, ValueId key, ValueId value,
                            int64_t heads, bool causal, ValueId bool_mask) {
  const int64_t c = b.shape(query)[-1];
  const ValueId w = b.param(prefix + ".in_proj_weight", {3 * c, c});
  const ValueId bias = b.param(prefix + ".in_proj_bias", {3 * c});
  ValueId merged;
  if (query == key && key == value) {
    merged = fused_self_attention(b, query, w, bias, heads, prefix, causal, bool_mask);
  } else {
    const auto project = [&](ValueId x, int64_t part, const char* tag) {
      const ValueId y = b.linear(x, b.slice_rows(w, part * c, (part + 1) * c),
                                 b.slice_rows(bias, part * c, (part + 1) * c), prefix + "." + tag);
      return split_heads(b, y, heads, prefix + "." + tag + "_heads");
    };
    const ValueId o = b.attention(project(query, 0, "q"), project(key, 1, "k"), project(value, 2, "v"),
                                  prefix + ".sdpa", causal, bool_mask);
    merged = merge_heads(b, o, prefix + ".heads_merged");
  }
  return b.linear(merged, prefix + ".out_proj", c);
}

ValueId clip_residual_block(Builder& b, ValueId x, int64_t heads, const std::string& prefix, bool causal,
                            float drop_path) {
  const int64_t tokens = b.shape(x)[1], c = b.shape(x)[-1];
  const auto dropped = [&](ValueId branch, const char* which) {
    return b.dropout(branch, drop_path, prefix + ".drop_path." + which, /*inner=*/c, /*units=*/tokens);
  };
  const ValueId h = b.layernorm(x, prefix + ".ln_1", 1e-5f);
  x = b.add(x, dropped(multihead_attention(b, prefix + ".attn", h, h, h, heads, causal), "attn"),
            prefix + ".attn_residual");
  ValueId m = b.linear(b.layernorm(x, prefix + ".ln_2", 1e-5f), prefix + ".mlp.c_fc", 4 * c);
  m = b.activation(m, kernels::Activation::quick_gelu, prefix + ".mlp.gelu");
  m = b.linear(m, prefix + ".mlp.c_proj", c);
  return b.add(x, dropped(m, "mlp"), prefix);
}

}  // namespace mfuser::model
