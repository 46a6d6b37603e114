// CPU reference of conv2d (im2col + cblas GEMM), and the device dispatch.
#include "kernels/conv2d/conv2d.h"

#include <cblas.h>

#include <algorithm>
#include <vector>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

// Floats in the im2col buffer of one band of output rows (16 MB).
constexpr int64_t kColumnBudget = int64_t(1) << 22;

struct Geometry {
  int64_t n, in_ch, h, w, out_ch, kh, kw, oh, ow;
};

Geometry geometry(const Tensor& x, const Tensor& weight, int stride, int padding) {
  Geometry g{x.dim(0), x.dim(1), x.dim(2), x.dim(3), weight.dim(0), weight.dim(2), weight.dim(3), 0, 0};
  g.oh = (g.h + 2 * padding - g.kh) / stride + 1;
  g.ow = (g.w + 2 * padding - g.kw) / stride + 1;
  return g;
}

void check_args(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& out, int stride,
                int padding) {
  check_f32("conv2d", "x", x);
  check_f32("conv2d", "weight", weight);
  check_f32("conv2d", "out", out);
  MFUSER_CHECK(x.ndim() == 4, "conv2d: x must be [N, I, H, W], got ", x.str());
  MFUSER_CHECK(weight.ndim() == 4 && weight.dim(1) == x.dim(1) && x.dim(1) >= 1 && weight.dim(2) >= 1 &&
                   weight.dim(3) >= 1,
               "conv2d: weight must be [O, I, KH, KW] with I = ", x.dim(1), " input channels, got ", weight.str());
  MFUSER_CHECK(stride >= 1 && padding >= 0, "conv2d: stride must be >= 1 and padding >= 0, got stride ", stride,
               ", padding ", padding);
  MFUSER_CHECK(x.dim(2) + 2 * padding >= weight.dim(2) && x.dim(3) + 2 * padding >= weight.dim(3),
               "conv2d: kernel of ", weight.str(), " larger than the padded input ", x.str(), " (padding ",
               padding, ")");
  if (bias.defined()) {
    check_f32("conv2d", "bias", bias);
    check_shape("conv2d", "bias", bias, {weight.dim(0)});
  }
  const Geometry g = geometry(x, weight, stride, padding);
  check_shape("conv2d", "out", out, {g.n, g.out_ch, g.oh, g.ow});
  check_same_device("conv2d", {&x, &weight, &bias, &out});
}

// Columns of output rows [row0, row0 + rows) of one image: col[(i * KH + ky) * KW + kx][r * OW + ox] is the
// input pixel that weight[:, i, ky, kx] meets at output (row0 + r, ox), or 0 in the padding.
void im2col(const float* image, const Geometry& g, int stride, int padding, int64_t row0, int64_t rows, float* col) {
  const int64_t cols = rows * g.ow;
  parallel_for(g.in_ch * g.kh * g.kw, 16, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t i = k / (g.kh * g.kw), ky = k / g.kw % g.kh, kx = k % g.kw;
      const float* plane = image + i * g.h * g.w;
      float* dst = col + k * cols;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t y = (row0 + r) * stride - padding + ky;
        for (int64_t ox = 0; ox < g.ow; ++ox) {
          const int64_t xx = ox * stride - padding + kx;
          dst[r * g.ow + ox] = (y >= 0 && y < g.h && xx >= 0 && xx < g.w) ? plane[y * g.w + xx] : 0.f;
        }
      }
    }
  });
}

}  // namespace

void cpu::conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int stride, int padding) {
  check_args(x, weight, bias, out, stride, padding);
  check_host("conv2d", x);
  const Geometry g = geometry(x, weight, stride, padding);
  if (out.numel() == 0) return;
  const int64_t kdim = g.in_ch * g.kh * g.kw, pixels = g.oh * g.ow;
  // A 1x1, stride-1, unpadded conv is a plain GEMM over the image itself.
  const bool direct = g.kh == 1 && g.kw == 1 && stride == 1 && padding == 0;
  const int64_t band_rows = direct ? g.oh : std::clamp<int64_t>(kColumnBudget / (kdim * g.ow), 1, g.oh);
  std::vector<float> col(direct ? 0 : size_t(kdim * band_rows * g.ow));
  const float* w = weight.data<float>();
  const float* b = bias.defined() ? bias.data<float>() : nullptr;
  for (int64_t n = 0; n < g.n; ++n) {
    const float* image = x.data<float>() + n * g.in_ch * g.h * g.w;
    float* y = out.data<float>() + n * g.out_ch * pixels;
    for (int64_t row0 = 0; row0 < g.oh; row0 += band_rows) {
      const int64_t rows = std::min(band_rows, g.oh - row0), cols = rows * g.ow;
      if (!direct) im2col(image, g, stride, padding, row0, rows, col.data());
      float* band = y + row0 * g.ow;
      // The GEMM accumulates onto the bias (beta = 1) when there is one.
      if (b)
        for (int64_t o = 0; o < g.out_ch; ++o) std::fill_n(band + o * pixels, cols, b[o]);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(g.out_ch), int(cols), int(kdim), 1.f, w, int(kdim),
                  direct ? image : col.data(), int(direct ? pixels : cols), b ? 1.f : 0.f, band, int(pixels));
    }
  }
}

void conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int stride, int padding) {
  check_args(x, weight, bias, out, stride, padding);
  if (x.device().is_cuda()) no_cuda_kernel_yet("conv2d");
  cpu::conv2d(x, weight, bias, out, stride, padding);
}

}  // namespace mfuser::kernels
