// posenc: the sine positional encoding of the pixel decoder, mmdet's SinePositionalEncoding(num_feats,
// temperature, normalize=True, scale, eps, offset) applied to an all-valid mask (no padded pixels). MFuser:
// num_feats 128, temperature 10000, scale 2*pi, eps 1e-6, offset 0, at 16x16, 32x32 and 64x64.
//
// Contract: out f32 (or bf16 on CUDA) [B, 2F, H, W] with F = num_feats even; nothing is read. Rows and
// columns count from 1:
//   y_i = (i + 1 + offset) / (H + eps) * scale        x_j = (j + 1 + offset) / (W + eps) * scale
//   t_k = temperature ^ (2 * floor(k / 2) / F)        k in [0, F)
//   out[b, k, i, j]     = sin(y_i / t_k) for even k, cos(y_i / t_k) for odd k   (the y features come first)
//   out[b, F + k, i, j] = the same with x_j
// so channels 2m and 2m + 1 are the sine and cosine of one angle. Every batch entry is the same. Computed in
// double and rounded to out's dtype (upstream computes in f32; the two agree to a few f32 ulps), on CUDA too
// (one thread per element).
#pragma once

#include <numbers>

#include "runtime/tensor.h"

namespace mfuser::kernels {

void posenc(Tensor& out, double temperature = 10000, double scale = 2 * std::numbers::pi, double eps = 1e-6,
            double offset = 0);  // dispatches on the device

namespace cpu {
void posenc(Tensor& out, double temperature = 10000, double scale = 2 * std::numbers::pi, double eps = 1e-6,
            double offset = 0);
}
namespace cuda {
void posenc(Tensor& out, double temperature, double scale, double eps, double offset);
}

}  // namespace mfuser::kernels
