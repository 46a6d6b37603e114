// attention: multi-head scaled dot-product attention, out = softmax(q k^T * scale + masks) v, per (batch, head).
// It equals PyTorch's scaled_dot_product_attention (torch >= 2.0) and the core of nn.MultiheadAttention.
// Used by the CLIP/DINOv2 blocks (1 x 16 x 1025 x 64), the causal text encoder (1 x 12 x 10 x 64), the
// decoder's masked cross-attention (1 x 8 x 19 x 32 over 1024 or 4096 keys, boolean mask) and the pixel
// decoder's cross-attention (1 x 8 x 5376 x 32 over 19 keys).
//
// Contract (all tensors on one device):
//   q [B, H, Lq, D], k and v [B, H, Lk, D], out [B, H, Lq, D]: f32. Lk >= 1.
//   scale: multiplies q k^T; default 1 / sqrt(D).
//   causal: query i attends to keys j <= i only (top-left aligned, torch.tril(ones(Lq, Lk)), also when
//     Lq != Lk).
//   bool_mask (optional): boolean [B or 1, H or 1, Lq, Lk], broadcast over batch/heads; true = masked out.
//   float_mask (optional): f32 [B or 1, H or 1, Lq, Lk], added to the scaled scores (may hold -inf).
//   A query row whose keys are all masked has no softmax: its output is NaN, as in PyTorch. (Mask2Former
//   unmasks such rows before calling.)
// The CPU reference never holds more than one tile of 64 queries x Lk scores.
#pragma once

#include <optional>

#include "runtime/tensor.h"

namespace mfuser::kernels {

void attention(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, bool causal = false,
               const Tensor& bool_mask = {}, const Tensor& float_mask = {},
               std::optional<float> scale = std::nullopt);

namespace cpu {
void attention(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, bool causal = false,
               const Tensor& bool_mask = {}, const Tensor& float_mask = {},
               std::optional<float> scale = std::nullopt);
}

}  // namespace mfuser::kernels
