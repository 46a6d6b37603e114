// CPU reference of conv2d (im2col + cblas GEMM) and of its backward (the same bands, col2im), and the device
// dispatch.
#include "kernels/conv2d/conv2d.h"

#include <cblas.h>

#include <algorithm>
#include <utility>
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
  check_float("conv2d", "x", x);
  check_float_like("conv2d", "weight", weight, x);
  check_float_like("conv2d", "out", out, x);
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
    check_float_like("conv2d", "bias", bias, x);
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

// The inverse of im2col for one band: adds col[(i * KH + ky) * KW + kx][r * OW + ox] into the input pixel it
// was read from (padding positions are dropped). One input channel per task, so no two tasks touch a pixel.
void col2im_add(const float* col, const Geometry& g, int stride, int padding, int64_t row0, int64_t rows,
                float* image) {
  const int64_t cols = rows * g.ow;
  parallel_for(g.in_ch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* plane = image + i * g.h * g.w;
      for (int64_t ky = 0; ky < g.kh; ++ky)
        for (int64_t kx = 0; kx < g.kw; ++kx) {
          const float* src = col + ((i * g.kh + ky) * g.kw + kx) * cols;
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t y = (row0 + r) * stride - padding + ky;
            if (y < 0 || y >= g.h) continue;
            for (int64_t ox = 0; ox < g.ow; ++ox) {
              const int64_t xx = ox * stride - padding + kx;
              if (xx >= 0 && xx < g.w) plane[y * g.w + xx] += src[r * g.ow + ox];
            }
          }
        }
    }
  });
}

void check_backward_args(const Tensor& x, const Tensor& weight, const Tensor& grad_out, const Tensor& grad_x,
                         const Tensor& grad_weight, const Tensor& grad_bias, int stride, int padding) {
  constexpr const char* op = "conv2d_backward";
  check_float_like(op, "grad_out", grad_out, x);
  check_args(x, weight, Tensor(), grad_out, stride, padding);  // grad_out has the forward output's shape
  const std::pair<const char*, const Tensor*> grads[] = {{"grad_x", &grad_x}, {"grad_weight", &grad_weight},
                                                         {"grad_bias", &grad_bias}};
  const Shape shapes[] = {x.shape(), weight.shape(), {weight.dim(0)}};
  for (int i = 0; i < 3; ++i) {
    if (!grads[i].second->defined()) continue;
    check_float_like(op, grads[i].first, *grads[i].second, x);
    check_shape(op, grads[i].first, *grads[i].second, shapes[i]);
  }
  check_same_device(op, {&x, &grad_out, &grad_x, &grad_weight, &grad_bias});
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

void cpu::conv2d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                          Tensor& grad_weight, Tensor& grad_bias, int stride, int padding) {
  check_backward_args(x, weight, grad_out, grad_x, grad_weight, grad_bias, stride, padding);
  check_host("conv2d_backward", x);
  const Geometry g = geometry(x, weight, stride, padding);
  const int64_t kdim = g.in_ch * g.kh * g.kw, pixels = g.oh * g.ow;
  const float* dy = grad_out.data<float>();
  if (grad_bias.defined()) {
    // Per channel in double, images in order: deterministic.
    float* gb = grad_bias.data<float>();
    parallel_for(g.out_ch, 16, [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        double sum = 0;
        for (int64_t n = 0; n < g.n; ++n)
          for (int64_t p = 0; p < pixels; ++p) sum += dy[(n * g.out_ch + o) * pixels + p];
        gb[o] = float(sum);
      }
    });
  }
  if (grad_x.defined()) std::fill_n(grad_x.data<float>(), grad_x.numel(), 0.f);
  if (grad_weight.defined()) std::fill_n(grad_weight.data<float>(), grad_weight.numel(), 0.f);
  if ((!grad_x.defined() && !grad_weight.defined()) || grad_out.numel() == 0) return;
  const bool direct = g.kh == 1 && g.kw == 1 && stride == 1 && padding == 0;
  const int64_t band_rows = direct ? g.oh : std::clamp<int64_t>(kColumnBudget / (kdim * g.ow), 1, g.oh);
  std::vector<float> col(direct ? 0 : size_t(kdim * band_rows * g.ow));
  const float* w = weight.data<float>();
  for (int64_t n = 0; n < g.n; ++n) {
    const float* image = x.data<float>() + n * g.in_ch * g.h * g.w;
    const float* dy_image = dy + n * g.out_ch * pixels;
    float* gx_image = grad_x.defined() ? grad_x.data<float>() + n * g.in_ch * g.h * g.w : nullptr;
    if (direct) {
      // grad_x = weight^T [I, O] grad_out [O, HW];  grad_weight += grad_out [O, HW] x^T [HW, I].
      if (gx_image)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(g.in_ch), int(pixels), int(g.out_ch), 1.f, w,
                    int(kdim), dy_image, int(pixels), 0.f, gx_image, int(pixels));
      if (grad_weight.defined())
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(g.out_ch), int(kdim), int(pixels), 1.f, dy_image,
                    int(pixels), image, int(pixels), 1.f, grad_weight.data<float>(), int(kdim));
      continue;
    }
    for (int64_t row0 = 0; row0 < g.oh; row0 += band_rows) {
      const int64_t rows = std::min(band_rows, g.oh - row0), cols = rows * g.ow;
      const float* dy_band = dy_image + row0 * g.ow;
      if (grad_weight.defined()) {
        im2col(image, g, stride, padding, row0, rows, col.data());
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(g.out_ch), int(kdim), int(cols), 1.f, dy_band,
                    int(pixels), col.data(), int(cols), 1.f, grad_weight.data<float>(), int(kdim));
      }
      if (gx_image) {
        // The band's column gradients [kdim, cols] = weight^T [kdim, O] grad_out_band [O, cols].
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(kdim), int(cols), int(g.out_ch), 1.f, w, int(kdim),
                    dy_band, int(pixels), 0.f, col.data(), int(cols));
        col2im_add(col.data(), g, stride, padding, row0, rows, gx_image);
      }
    }
  }
}

void conv2d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                     Tensor& grad_weight, Tensor& grad_bias, int stride, int padding) {
  check_backward_args(x, weight, grad_out, grad_x, grad_weight, grad_bias, stride, padding);
  if (x.device().is_cuda())
    return MFUSER_CUDA_KERNEL(
        cuda::conv2d_backward(x, weight, grad_out, grad_x, grad_weight, grad_bias, stride, padding));
  cpu::conv2d_backward(x, weight, grad_out, grad_x, grad_weight, grad_bias, stride, padding);
}

void conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int stride, int padding) {
  check_args(x, weight, bias, out, stride, padding);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::conv2d(x, weight, bias, out, stride, padding));
  cpu::conv2d(x, weight, bias, out, stride, padding);
}

}  // namespace mfuser::kernels
