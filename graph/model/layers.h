// Building blocks that several model files share: torch's nn.MultiheadAttention, CLIP's residual block, the
// per-head layouts, and a way to give a module's output its official name.
#pragma once

#include <string>

#include "graph/model/builder.h"

namespace mfuser::model {

// A free view of `x` named `name`. Where a module ends in a submodule whose node is named after its weights
// ("context_decoder.memory_proj.2"), this gives the module's output its own name ("context_decoder.memory_proj").
ValueId name_output(Builder& b, ValueId x, const std::string& name);

// [B, L, heads * D] -> [B, heads, L, D] (the attention kernel's layout), and back.
ValueId split_heads(Builder& b, ValueId x, int64_t heads, const std::string& name);
ValueId merge_heads(Builder& b, ValueId x, const std::string& name);

// Self-attention with one fused q/k/v projection (qkv_weight [3C, C]), before any output projection:
// x [B, L, C] -> [B, L, C] with heads merged; DINOv2's attn.qkv and nn.MultiheadAttention's in_proj.
ValueId fused_self_attention(Builder& b, ValueId x, ValueId qkv_weight, ValueId qkv_bias, int64_t heads,
                             const std::string& name, bool causal = false, ValueId bool_mask = kNoValue);

// torch's nn.MultiheadAttention, batch-first and without its residual: weights prefix.in_proj_weight [3C, C],
// prefix.in_proj_bias [3C], prefix.out_proj; query [B, Lq, C], key and value [B, Lk, C] -> [B, Lq, C].
// When query, key and value are one value, the three projections are one GEMM. bool_mask: [B or 1, 1, Lq, Lk],
// true = not attended (torch's convention); causal: the text encoder's triu(-inf) mask.
ValueId multihead_attention(Builder& b, const std::string& prefix, ValueId query, ValueId key, ValueId value,
                            int64_t heads, bool causal = false, ValueId bool_mask = kNoValue);

// CLIP's ResidualAttentionBlock: x += drop_path(attn(ln_1 x)); x += drop_path(mlp(ln_2 x)), QuickGELU, LayerNorm
// eps 1e-5. x [B, L, C]; the output is named `prefix` ("text_encoder.transformer.resblocks.3"). DropPath (in
// training, Builder::dropout) draws once per token position, shared by the batch and the channels: upstream runs
// the blocks on [L, B, C] and timm's drop_path draws per entry of dim 0.
ValueId clip_residual_block(Builder& b, ValueId x, int64_t heads, const std::string& prefix, bool causal,
                            float drop_path = 0.f);

}  // namespace mfuser::model
