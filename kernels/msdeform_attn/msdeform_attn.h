// msdeform_attn: the sampling core of multi-scale deformable attention (Deformable DETR), as mmcv 1.x's
// multi_scale_deformable_attn_pytorch and its CUDA twin MultiScaleDeformableAttnFunction: for every query and
// head, a weighted sum of bilinear samples of the value maps at L levels x P points. The projections around it
// (value_proj, sampling_offsets, attention_weights + softmax, output_proj) are ordinary ops.
//
// Contract (one device; the float tensors f32, or bf16 on CUDA, all of one dtype; f32 sums):
//   value               f32 [Bt, S, H, Dh]   the L levels' maps, each flattened row-major, concatenated (S = sum h*w)
//   spatial_shapes      i64 [L, 2]           (h_l, w_l) per level
//   level_start_index   i64 [L]              where level l starts in S (must be the running sum of h*w)
//   sampling_locations  f32 [Bt, Q, H, L, P, 2]  (x, y) normalized: 0 and 1 are the outer edges of the map,
//                                            any value allowed (outside the map reads zeros)
//   attention_weights   f32 [Bt, Q, H, L, P]
//   out                 f32 [Bt, Q, H * Dh]
// out[b, q, h*Dh + c] = sum_{l, p} attention_weights[b, q, h, l, p] * sample_l(b, h, c, x * w_l - 0.5, y * h_l - 0.5)
// where sample_l is bilinear interpolation in pixel coordinates (pixel (i, j) centred at (j, i)) that reads every
// pixel outside the map as 0: exactly F.grid_sample(value_l, 2 * loc - 1, mode='bilinear', padding_mode='zeros',
// align_corners=False). MFuser: levels 16x16, 32x32, 64x64 (S = Q = 5376), H = 8, Dh = 32, P = 4.
// The CPU kernel checks the level table against value; on CUDA the table stays on the device unchecked (a wrong
// one gives wrong sums, but the kernel never reads outside value).
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

// Backward of msdeform_attn: from the forward's inputs (nothing else saved) and grad_out [Bt, Q, H * Dh],
// OVERWRITES grad_value (value's shape), grad_sampling_locations and grad_attention_weights (their inputs' shapes).
// The level tables are integers (no gradient). Each sample's pixel coordinates are recomputed in double (exactly
// loc * n - 0.5 for f32 loc), so a sample exactly on a pixel centre or edge picks the same corners as
// F.grid_sample's float64 autograd: corners floor(x), floor(x) + 1; the location gradient is the slope of the
// bilinear patch between them (one-sided at integer x), and corners outside the map contribute nothing (a sample
// at x = -1 still has a location gradient through pixel 0; one at x = n has none). Parallel over (batch, head,
// level), whose value gradients are disjoint, so the result does not depend on the thread count.
// On CUDA (bf16 allowed, every float tensor of one dtype; f32 sums, the channel dots in f32 rather than double):
// grad_sampling_locations and grad_attention_weights are per-sample gathers, deterministic; grad_value is
// accumulated with f32 atomicAdd (in an f32 buffer, rounded once for bf16), so ITS last bits may differ run to
// run. That is accepted here: the scatter order varies, the error stays at f32 rounding (~1e-6 relative).
void msdeform_attn_backward(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                            const Tensor& sampling_locations, const Tensor& attention_weights,
                            const Tensor& grad_out, Tensor& grad_value, Tensor& grad_sampling_locations,
                            Tensor& grad_attention_weights);  // dispatches on the device

void msdeform_attn(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                   const Tensor& sampling_locations, const Tensor& attention_weights,
                   Tensor& out);  // dispatches on the device

namespace cuda {
void msdeform_attn(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                   const Tensor& sampling_locations, const Tensor& attention_weights, Tensor& out);
void msdeform_attn_backward(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                            const Tensor& sampling_locations, const Tensor& attention_weights,
                            const Tensor& grad_out, Tensor& grad_value, Tensor& grad_sampling_locations,
                            Tensor& grad_attention_weights);
}  // namespace cuda

namespace cpu {
void msdeform_attn(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                   const Tensor& sampling_locations, const Tensor& attention_weights, Tensor& out);
void msdeform_attn_backward(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                            const Tensor& sampling_locations, const Tensor& attention_weights,
                            const Tensor& grad_out, Tensor& grad_value, Tensor& grad_sampling_locations,
                            Tensor& grad_attention_weights);
}

}  // namespace mfuser::kernels
