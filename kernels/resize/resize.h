// resize: 2-D interpolation of NCHW maps, as F.interpolate(x, ..., mode='bilinear' | 'bicubic',
// align_corners=False) without antialiasing, up or down by any factor.
//
// Contract: src [N, C, H, W] -> dst [N, C, H', W'] (all sizes >= 1) on one device, both f32 (or both bf16 on
// CUDA); dst's shape is the output size. Output pixel i reads the source at s = (i + 0.5) * step - 0.5
// (half-pixel centres), where
//   step = H / H'      by default: F.interpolate(size=(H', W')), or
//   step = 1 / scale   when scale_h (scale_w) > 0: F.interpolate(scale_factor=(scale_h, scale_w)) with the
//                      default recompute_scale_factor, whose output is floor(H * scale_h) (checked). DINOv2
//                      resizes its positional embedding this way, with scale (32 + 0.1) / 37, so the step is
//                      not 37 / 32.
// resize_bilinear: s is clamped below at 0; taps floor(s) and floor(s) + 1 (clamped to the last pixel) with
//   weights 1 - frac and frac. (CLIP's positional embedding, the pixel decoder's FPN, attention masks, logits.)
// resize_bicubic: Keys' cubic convolution with A = -0.75 on taps floor(s) - 1 .. floor(s) + 2, s unclamped and
//   the taps clamped to the border (edge replication). (DINOv2's positional embedding and patch kernel.)
// Weights are computed in double and applied in f32 (the CUDA kernel: the same arithmetic, one thread per
// output element).
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

// Dispatch on the device.
void resize_bilinear(const Tensor& src, Tensor& dst, double scale_h = 0, double scale_w = 0);
void resize_bicubic(const Tensor& src, Tensor& dst, double scale_h = 0, double scale_w = 0);

// Backward of resize_bilinear (f32, or bf16 on CUDA; F.interpolate's autograd, align_corners=False): from grad_dst
// [N, C, H', W'], OVERWRITES grad_src [N, C, H, W] (the forward's input shape), given the forward's scale
// arguments. Each source pixel receives weight * grad_dst from every output pixel whose taps include it (a tap
// clamped onto the border pixel adds there); sums run in double, one plane per task. Nothing from the forward
// is needed but the shapes. CUDA: a gather, one thread per source pixel over the output pixels that tap it
// (f32 sums, no atomics: deterministic).
// resize_bicubic has no backward: MFuser uses it only on frozen positional embeddings.
void resize_bilinear_backward(const Tensor& grad_dst, Tensor& grad_src, double scale_h = 0, double scale_w = 0);

namespace cpu {
void resize_bilinear_backward(const Tensor& grad_dst, Tensor& grad_src, double scale_h = 0, double scale_w = 0);
void resize_bilinear(const Tensor& src, Tensor& dst, double scale_h = 0, double scale_w = 0);
void resize_bicubic(const Tensor& src, Tensor& dst, double scale_h = 0, double scale_w = 0);
}  // namespace cpu
namespace cuda {
void resize_bilinear(const Tensor& src, Tensor& dst, double scale_h, double scale_w);
void resize_bicubic(const Tensor& src, Tensor& dst, double scale_h, double scale_w);
void resize_bilinear_backward(const Tensor& grad_dst, Tensor& grad_src, double scale_h, double scale_w);
}  // namespace cuda

}  // namespace mfuser::kernels
