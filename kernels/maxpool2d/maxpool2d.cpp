// CPU reference of maxpool2d and its backward, and the device dispatch.
#include "kernels/maxpool2d/maxpool2d.h"

#include <algorithm>
#include <cmath>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& x, const Tensor& out, int kernel, int stride) {
  check_float("maxpool2d", "x", x);
  check_float_like("maxpool2d", "out", out, x);
  MFUSER_CHECK(x.ndim() == 4, "maxpool2d: x must be [N, C, H, W], got ", x.str());
  MFUSER_CHECK(kernel >= 1 && stride >= 1, "maxpool2d: kernel and stride must be >= 1, got kernel ", kernel,
               ", stride ", stride);
  MFUSER_CHECK(x.dim(2) >= kernel && x.dim(3) >= kernel, "maxpool2d: kernel ", kernel, " larger than the input ",
               x.str());
  check_shape("maxpool2d", "out", out,
              {x.dim(0), x.dim(1), (x.dim(2) - kernel) / stride + 1, (x.dim(3) - kernel) / stride + 1});
  check_same_device("maxpool2d", {&x, &out});
}

void check_backward_args(const Tensor& x, const Tensor& grad_out, const Tensor& grad_x, int kernel, int stride) {
  check_args(x, grad_out, kernel, stride);  // grad_out has the forward output's shape and x's dtype
  check_float_like("maxpool2d_backward", "grad_x", grad_x, x);
  check_shape("maxpool2d_backward", "grad_x", grad_x, x.shape());
  check_same_device("maxpool2d_backward", {&x, &grad_out, &grad_x});
}

// Offset (ky * W + kx) of the window's maximum: the first on ties; once NaN, nothing compares greater, so NaN
// sticks (and a later NaN takes over, as in PyTorch's argmax).
int64_t window_argmax(const float* window, int64_t w, int kernel) {
  int64_t best = 0;
  for (int ky = 0; ky < kernel; ++ky)
    for (int kx = 0; kx < kernel; ++kx) {
      const float v = window[ky * w + kx];
      if (v > window[best] || std::isnan(v)) best = ky * w + kx;
    }
  return best;
}

}  // namespace

void cpu::maxpool2d(const Tensor& x, Tensor& out, int kernel, int stride) {
  check_args(x, out, kernel, stride);
  check_host("maxpool2d", x);
  const int64_t h = x.dim(2), w = x.dim(3), oh = out.dim(2), ow = out.dim(3);
  const float* in = x.data<float>();
  float* y = out.data<float>();
  // One (image, channel) plane per task.
  parallel_for(x.dim(0) * x.dim(1), 4, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const float* src = in + plane * h * w;
      float* dst = y + plane * oh * ow;
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox) {
          const float* window = src + oy * stride * w + ox * stride;
          dst[oy * ow + ox] = window[window_argmax(window, w, kernel)];
        }
    }
  });
}

void cpu::maxpool2d_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_x, int kernel, int stride) {
  check_backward_args(x, grad_out, grad_x, kernel, stride);
  check_host("maxpool2d_backward", x);
  const int64_t h = x.dim(2), w = x.dim(3), oh = grad_out.dim(2), ow = grad_out.dim(3);
  const float* in = x.data<float>();
  const float* dy = grad_out.data<float>();
  float* dx = grad_x.data<float>();
  // One plane per task: overlapping windows of a plane add into it in a fixed order.
  parallel_for(x.dim(0) * x.dim(1), 4, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const float* src = in + plane * h * w;
      float* dst = dx + plane * h * w;
      std::fill_n(dst, h * w, 0.f);
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox) {
          const int64_t corner = oy * stride * w + ox * stride;
          dst[corner + window_argmax(src + corner, w, kernel)] += dy[(plane * oh + oy) * ow + ox];
        }
    }
  });
}

void maxpool2d_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_x, int kernel, int stride) {
  check_backward_args(x, grad_out, grad_x, kernel, stride);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::maxpool2d_backward(x, grad_out, grad_x, kernel, stride));
  cpu::maxpool2d_backward(x, grad_out, grad_x, kernel, stride);
}

void maxpool2d(const Tensor& x, Tensor& out, int kernel, int stride) {
  check_args(x, out, kernel, stride);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::maxpool2d(x, out, kernel, stride));
  cpu::maxpool2d(x, out, kernel, stride);
}

}  // namespace mfuser::kernels
