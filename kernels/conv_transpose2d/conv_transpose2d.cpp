// CPU reference of conv_transpose2d (stride = kernel: GEMM then scatter) and of its backward (gather then
// GEMMs), and the device dispatch.
#include "kernels/conv_transpose2d/conv_transpose2d.h"

#include <cblas.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

// Floats in the GEMM result of one band of input rows (4 MB: the 2048-channel 16x16 golden case takes two
// bands, so the banding is tested).
constexpr int64_t kTapBudget = int64_t(1) << 20;

void check_args(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& out) {
  check_float("conv_transpose2d", "x", x);
  check_float_like("conv_transpose2d", "weight", weight, x);
  check_float_like("conv_transpose2d", "out", out, x);
  MFUSER_CHECK(x.ndim() == 4 && x.dim(1) >= 1, "conv_transpose2d: x must be [N, I >= 1, H, W], got ", x.str());
  MFUSER_CHECK(weight.ndim() == 4 && weight.dim(0) == x.dim(1) && weight.dim(2) >= 1 &&
                   weight.dim(2) == weight.dim(3),
               "conv_transpose2d: weight must be [I, O, K, K] with I = ", x.dim(1), " input channels, got ",
               weight.str());
  const int64_t o = weight.dim(1), k = weight.dim(2);
  if (bias.defined()) {
    check_float_like("conv_transpose2d", "bias", bias, x);
    check_shape("conv_transpose2d", "bias", bias, {o});
  }
  check_shape("conv_transpose2d", "out", out, {x.dim(0), o, x.dim(2) * k, x.dim(3) * k});
  check_same_device("conv_transpose2d", {&x, &weight, &bias, &out});
}

void check_backward_args(const Tensor& x, const Tensor& weight, const Tensor& grad_out, const Tensor& grad_x,
                         const Tensor& grad_weight, const Tensor& grad_bias) {
  constexpr const char* op = "conv_transpose2d_backward";
  check_float_like(op, "grad_out", grad_out, x);
  check_args(x, weight, Tensor(), grad_out);  // grad_out has the forward output's shape
  const std::pair<const char*, const Tensor*> grads[] = {{"grad_x", &grad_x}, {"grad_weight", &grad_weight},
                                                         {"grad_bias", &grad_bias}};
  const Shape shapes[] = {x.shape(), weight.shape(), {weight.dim(1)}};
  for (int i = 0; i < 3; ++i) {
    if (!grads[i].second->defined()) continue;
    check_float_like(op, grads[i].first, *grads[i].second, x);
    check_shape(op, grads[i].first, *grads[i].second, shapes[i]);
  }
  check_same_device(op, {&x, &grad_out, &grad_x, &grad_weight, &grad_bias});
}

}  // namespace

void cpu::conv_transpose2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out) {
  check_args(x, weight, bias, out);
  check_host("conv_transpose2d", x);
  if (out.numel() == 0) return;
  const int64_t in_ch = x.dim(1), h = x.dim(2), w = x.dim(3), out_ch = weight.dim(1), k = weight.dim(2);
  const int64_t taps = out_ch * k * k, out_w = w * k;
  const int64_t band_rows = std::clamp<int64_t>(kTapBudget / (taps * w), 1, h);
  // taps_of_band[(o * K + dy) * K + dx][r * W + x]: output pixel (y*K + dy, x*K + dx) of channel o, bias aside.
  std::vector<float> taps_of_band(size_t(taps * band_rows * w));
  const float* b = bias.defined() ? bias.data<float>() : nullptr;
  for (int64_t n = 0; n < x.dim(0); ++n) {
    const float* image = x.data<float>() + n * in_ch * h * w;
    float* y = out.data<float>() + n * out_ch * h * k * out_w;
    for (int64_t row0 = 0; row0 < h; row0 += band_rows) {
      const int64_t rows = std::min(band_rows, h - row0), cols = rows * w;
      // weight viewed as [I, O*K*K]; its transpose times the band's [I, cols] pixels.
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(taps), int(cols), int(in_ch), 1.f,
                  weight.data<float>(), int(taps), image + row0 * w, int(h * w), 0.f, taps_of_band.data(),
                  int(cols));
      parallel_for(out_ch, 16, [&](int64_t begin, int64_t end) {
        for (int64_t o = begin; o < end; ++o) {
          const float shift = b ? b[o] : 0.f;
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t dy = 0; dy < k; ++dy) {
              float* dst = y + (o * h * k + (row0 + r) * k + dy) * out_w;
              for (int64_t dx = 0; dx < k; ++dx) {
                const float* src = taps_of_band.data() + ((o * k + dy) * k + dx) * cols + r * w;
                for (int64_t xx = 0; xx < w; ++xx) dst[xx * k + dx] = src[xx] + shift;
              }
            }
        }
      });
    }
  }
}

void cpu::conv_transpose2d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                                    Tensor& grad_weight, Tensor& grad_bias) {
  check_backward_args(x, weight, grad_out, grad_x, grad_weight, grad_bias);
  check_host("conv_transpose2d_backward", x);
  const int64_t in_ch = x.dim(1), h = x.dim(2), w = x.dim(3), out_ch = weight.dim(1), k = weight.dim(2);
  const int64_t taps = out_ch * k * k, out_w = w * k;
  if (grad_weight.defined()) std::fill_n(grad_weight.data<float>(), grad_weight.numel(), 0.f);
  if (grad_bias.defined()) {
    // Per channel in double, images in order: deterministic.
    float* gb = grad_bias.data<float>();
    const int64_t plane = h * k * out_w;
    parallel_for(out_ch, 16, [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        double sum = 0;
        for (int64_t n = 0; n < x.dim(0); ++n) {
          const float* src = grad_out.data<float>() + (n * out_ch + o) * plane;
          for (int64_t i = 0; i < plane; ++i) sum += src[i];
        }
        gb[o] = float(sum);
      }
    });
  }
  if ((!grad_x.defined() && !grad_weight.defined()) || x.numel() == 0) return;
  const int64_t band_rows = std::clamp<int64_t>(kTapBudget / (taps * w), 1, h);
  // Same layout as the forward's buffer: taps_of_band[(o * K + dy) * K + dx][r * W + x].
  std::vector<float> taps_of_band(size_t(taps * band_rows * w));
  for (int64_t n = 0; n < x.dim(0); ++n) {
    const float* image = x.data<float>() + n * in_ch * h * w;
    const float* dy_image = grad_out.data<float>() + n * out_ch * h * k * out_w;
    for (int64_t row0 = 0; row0 < h; row0 += band_rows) {
      const int64_t rows = std::min(band_rows, h - row0), cols = rows * w;
      parallel_for(out_ch, 16, [&](int64_t begin, int64_t end) {
        for (int64_t o = begin; o < end; ++o)
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t dy = 0; dy < k; ++dy) {
              const float* src = dy_image + (o * h * k + (row0 + r) * k + dy) * out_w;
              for (int64_t dx = 0; dx < k; ++dx) {
                float* dst = taps_of_band.data() + ((o * k + dy) * k + dx) * cols + r * w;
                for (int64_t xx = 0; xx < w; ++xx) dst[xx] = src[xx * k + dx];
              }
            }
      });
      // grad_x band [I, cols] = weight [I, O*K*K] x taps [O*K*K, cols].
      if (grad_x.defined())
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(in_ch), int(cols), int(taps), 1.f,
                    weight.data<float>(), int(taps), taps_of_band.data(), int(cols), 0.f,
                    grad_x.data<float>() + n * in_ch * h * w + row0 * w, int(h * w));
      // grad_weight [I, O*K*K] += x band [I, cols] x taps^T [cols, O*K*K].
      if (grad_weight.defined())
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(in_ch), int(taps), int(cols), 1.f, image + row0 * w,
                    int(h * w), taps_of_band.data(), int(cols), 1.f, grad_weight.data<float>(), int(taps));
    }
  }
}

void conv_transpose2d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                               Tensor& grad_weight, Tensor& grad_bias) {
  check_backward_args(x, weight, grad_out, grad_x, grad_weight, grad_bias);
  if (x.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::conv_transpose2d_backward(x, weight, grad_out, grad_x, grad_weight, grad_bias));
  cpu::conv_transpose2d_backward(x, weight, grad_out, grad_x, grad_weight, grad_bias);
}

void conv_transpose2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out) {
  check_args(x, weight, bias, out);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::conv_transpose2d(x, weight, bias, out));
  cpu::conv_transpose2d(x, weight, bias, out);
}

}  // namespace mfuser::kernels
