// softmax over the last dim, with an optional mask: out = softmax(x + mask, dim=-1).
//
// x and out: f32 of one shape (out may be x). mask: an undefined Tensor() for none, or a tensor that
// broadcasts numpy-style onto x's shape (e.g. [Lq, Lk] over [B, heads, Lq, Lk], or a key-padding mask
// [B, 1, 1, Lk]); its dtype selects the meaning:
//   f32      additive: added to the logits (0 keeps, -inf removes), as attn_mask in F.softmax(q k^T + mask)
//   boolean  true = masked out (the logit becomes -inf), the nn.MultiheadAttention convention
// Equals torch.softmax(x + mask, -1), resp. torch.softmax(x.masked_fill(mask, -inf), -1).
//
// A row whose logits are all -inf (fully masked, either kind) comes out as all NaN, exactly as in PyTorch
// (max is -inf, and -inf - -inf is NaN); nn.MultiheadAttention in PyTorch 1.13 turns a boolean mask into
// such -inf logits, so it gives NaN rows too. Keeping PyTorch's answer rather than inventing zeros means the
// oracle and this runtime agree everywhere; callers whose model avoids the case do so themselves, as the
// Mask2Former decoder does by unmasking fully masked rows before attention.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void softmax(const Tensor& x, const Tensor& mask, Tensor& out);

namespace cpu {
void softmax(const Tensor& x, const Tensor& mask, Tensor& out);
}

}  // namespace mfuser::kernels
