// point_sample: mmcv / detectron2 point_sample(input, point_coords, align_corners=False) as the Mask2Former loss
// uses it (tools/reference/mfuser_ref/losses.py): bilinear samples of every channel of a map at normalized points.
//
// Contract (one device; f32, or bf16 on CUDA, one dtype for all three; f32 accumulation):
//   input   f32 [N, C, H, W]
//   points  f32 [N, P, 2]   (x, y) normalized: 0 and 1 are the outer edges of the map; any value allowed
//                           (pixels outside the map read as 0)
//   out     f32 [N, C, P]
// out[n, c, p] = bilinear sample of input[n, c] at pixel coordinates (x * W - 0.5, y * H - 0.5) (pixel (i, j)
// centred at (j, i)), i.e. F.grid_sample(input, 2 * points - 1 as [N, P, 1, 2], mode='bilinear',
// padding_mode='zeros', align_corners=False).squeeze(3). Pixel coordinates are formed in double (exact for f32
// points), so points on pixel centres and edges pick the same corners floor(x), floor(x) + 1 as grid_sample.
// MFuser: mask logits [19, 1, 128, 128] and mask targets [19, 1, 512, 512] (per image) at 12544 points.
//
// The bilinear taps of kernels/msdeform_attn are private to its .cpp (and its forward forms coordinates in f32),
// so this op keeps its own small tap helper rather than changing msdeform's results.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void point_sample(const Tensor& input, const Tensor& points, Tensor& out);  // dispatches on the device

// Backward of point_sample: from the forward's points (the only thing to save; input is not read) and
// grad_out [N, C, P], OVERWRITES grad_input (input's shape) with the scatter of grad_out through the same bilinear
// weights (corners outside the map receive nothing). No gradient for points: the loss samples at points drawn from
// a random generator and from detached logits, so they carry no gradient. Parallel over (n, c) planes, which are
// disjoint, so the result does not depend on the thread count. Runs on CUDA too (bf16 allowed there, one dtype for
// all three; f32 sums): points sorted by their taps' top-left pixel (stable radix sort), then one thread per pixel
// gathers its points in a fixed order, so the CUDA result is deterministic as well (no float atomics).
void point_sample_backward(const Tensor& points, const Tensor& grad_out, Tensor& grad_input);  // dispatches

namespace cuda {
void point_sample(const Tensor& input, const Tensor& points, Tensor& out);
void point_sample_backward(const Tensor& points, const Tensor& grad_out, Tensor& grad_input);
}  // namespace cuda

namespace cpu {
void point_sample(const Tensor& input, const Tensor& points, Tensor& out);
void point_sample_backward(const Tensor& points, const Tensor& grad_out, Tensor& grad_input);
}  // namespace cpu

}  // namespace mfuser::kernels
