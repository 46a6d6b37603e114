// attention: multi-head scaled dot-product attention, out = softmax(q k^T * scale + masks) v, per (batch, head).
// It equals PyTorch's scaled_dot_product_attention (torch >= 2.0) and the core of nn.MultiheadAttention.
// Used by the CLIP/DINOv2 blocks (1 x 16 x 1025 x 64), the causal text encoder (1 x 12 x 10 x 64), the
// decoder's masked cross-attention (1 x 8 x 19 x 32 over 1024 or 4096 keys, boolean mask) and the pixel
// decoder's cross-attention (1 x 8 x 5376 x 32 over 19 keys).
//
// Contract (all tensors on one device):
//   q [B, H, Lq, D], k and v [B, H, Lk, D], out [B, H, Lq, D]: f32 (or bf16 on CUDA), one dtype. Lk >= 1.
//   The CUDA kernel takes D <= 128.
//   scale: multiplies q k^T; default 1 / sqrt(D).
//   causal: query i attends to keys j <= i only (top-left aligned, torch.tril(ones(Lq, Lk)), also when
//     Lq != Lk).
//   bool_mask (optional): boolean [B or 1, H or 1, Lq, Lk], broadcast over batch/heads; true = masked out.
//   float_mask (optional): q's dtype, [B or 1, H or 1, Lq, Lk], added to the scaled scores (may hold -inf).
//   A query row whose keys are all masked has no softmax: its output is NaN, as in PyTorch. (Mask2Former
//   unmasks such rows before calling.)
// The CPU reference never holds more than one tile of 64 queries x Lk scores; the CUDA kernel is one fused
// flash-style launch (online softmax over key tiles in f32; bf16 on tensor cores with P rounded to bf16).
//
// attention_backward: gradients given grad_out ([B, H, Lq, D], q's dtype: f32, or bf16 on CUDA) for the same
// q, k, v, causal, masks and scale as the forward. It runs on the CPU and on CUDA (D <= 128; two launches: one
// per 64-query tile for the row logsumexp, delta and grad_q, one per 64-key tile for grad_k and grad_v; CUDA-core
// FMAs in f32, no atomics: bitwise reproducible; f32 scratch of 2 B H Lq floats). Nothing but `out` may be
// saved: the probabilities are recomputed per query tile (flash-style; on the CPU at most two 64 x Lk buffers
// per thread, never an Lq x Lk matrix per head). `out` (the forward's output) is optional: with it, each row's
// softmax correction is rowsum(grad_out * out) (D terms); undefined, it is rowsum(P * dP) over the Lk keys
// instead (same value, no saved output needed). Outputs:
//   grad_q [B, H, Lq, D], grad_k and grad_v [B, H, Lk, D], q's dtype, all required and OVERWRITTEN (never
//   accumulated into). `out` too is q's dtype.
// The masks are constants: float_mask gets no gradient (the model passes none; its boolean masks come from
// thresholded predictions). Masked keys get zero gradient through their probability; an all-masked query row
// has NaN probabilities and makes its grad_q row and every grad_k / grad_v row NaN, as PyTorch does. The
// CPU kernel runs one (batch, head) per task with its query tiles in order, so grad_k / grad_v are summed in a
// fixed order (deterministic) without per-tile partial buffers.
#pragma once

#include <optional>

#include "runtime/tensor.h"

namespace mfuser::kernels {

void attention(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, bool causal = false,
               const Tensor& bool_mask = {}, const Tensor& float_mask = {},
               std::optional<float> scale = std::nullopt);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& grad_out,
                        Tensor& grad_q, Tensor& grad_k, Tensor& grad_v, bool causal = false,
                        const Tensor& bool_mask = {}, const Tensor& float_mask = {},
                        std::optional<float> scale = std::nullopt);

namespace cuda {
void attention(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, bool causal,
               const Tensor& bool_mask, const Tensor& float_mask, std::optional<float> scale);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& grad_out,
                        Tensor& grad_q, Tensor& grad_k, Tensor& grad_v, bool causal, const Tensor& bool_mask,
                        const Tensor& float_mask, std::optional<float> scale);
}

namespace cpu {
void attention(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, bool causal = false,
               const Tensor& bool_mask = {}, const Tensor& float_mask = {},
               std::optional<float> scale = std::nullopt);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& grad_out,
                        Tensor& grad_q, Tensor& grad_k, Tensor& grad_v, bool causal = false,
                        const Tensor& bool_mask = {}, const Tensor& float_mask = {},
                        std::optional<float> scale = std::nullopt);
}

}  // namespace mfuser::kernels
