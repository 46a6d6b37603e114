// softmax over the last dim, with an optional mask: out = softmax(x + mask, dim=-1).
//
// x and out: f32 (or bf16 on CUDA) of one shape and dtype (out may be x). mask: an undefined Tensor() for
// none, or a tensor that broadcasts numpy-style onto x's shape (e.g. [Lq, Lk] over [B, heads, Lq, Lk], or a
// key-padding mask [B, 1, 1, Lk]); its dtype selects the meaning:
//   x's dtype additive: added to the logits (0 keeps, -inf removes), as attn_mask in F.softmax(q k^T + mask)
//   boolean  true = masked out (the logit becomes -inf), the nn.MultiheadAttention convention
// Equals torch.softmax(x + mask, -1), resp. torch.softmax(x.masked_fill(mask, -inf), -1). Max and sum are f32
// on CUDA (f64 sum on the CPU); bf16 storage rounds only the stored output.
//
// A row whose logits are all -inf (fully masked, either kind) comes out as all NaN, exactly as in PyTorch
// (max is -inf, and -inf - -inf is NaN); nn.MultiheadAttention in PyTorch 1.13 turns a boolean mask into
// such -inf logits, so it gives NaN rows too. Keeping PyTorch's answer rather than inventing zeros means the
// oracle and this runtime agree everywhere; callers whose model avoids the case do so themselves, as the
// Mask2Former decoder does by unmasking fully masked rows before attention.
//
// softmax_backward(y, grad_out, grad_in): grad_in = y * (grad_out - sum_j grad_out_j y_j) row by row (the
// gradient with respect to the logits x, and so also to an additive mask), from the forward's OUTPUT y
// (saved; x and the mask are not needed). Masked entries have y = 0 and get exactly 0 (for finite
// grad_out), as torch's masked_fill backward gives them. y, grad_out and grad_in: f32 (or bf16 on CUDA) of
// one shape and dtype; grad_in is OVERWRITTEN and may be grad_out or y itself. Dot products accumulate in
// f64 on the CPU, in f32 on CUDA (one block per row, a fixed reduction tree). Rows that the
// forward made NaN (fully masked) are OUT OF CONTRACT: their gradient is NaN here, while PyTorch gives NaN
// for an additive -inf mask but zeros through a boolean masked_fill; callers must not rely on either.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void softmax(const Tensor& x, const Tensor& mask, Tensor& out);
void softmax_backward(const Tensor& y, const Tensor& grad_out, Tensor& grad_in);

namespace cuda {
void softmax(const Tensor& x, const Tensor& mask, Tensor& out);
void softmax_backward(const Tensor& y, const Tensor& grad_out, Tensor& grad_in);
}  // namespace cuda

namespace cpu {
void softmax(const Tensor& x, const Tensor& mask, Tensor& out);
void softmax_backward(const Tensor& y, const Tensor& grad_out, Tensor& grad_in);
}  // namespace cpu

}  // namespace mfuser::kernels
