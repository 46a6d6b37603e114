// CPU reference of maxpool2d, and the device dispatch.
#include "kernels/maxpool2d/maxpool2d.h"

#include <cmath>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& x, const Tensor& out, int kernel, int stride) {
  check_f32("maxpool2d", "x", x);
  check_f32("maxpool2d", "out", out);
  MFUSER_CHECK(x.ndim() == 4, "maxpool2d: x must be [N, C, H, W], got ", x.str());
  MFUSER_CHECK(kernel >= 1 && stride >= 1, "maxpool2d: kernel and stride must be >= 1, got kernel ", kernel,
               ", stride ", stride);
  MFUSER_CHECK(x.dim(2) >= kernel && x.dim(3) >= kernel, "maxpool2d: kernel ", kernel, " larger than the input ",
               x.str());
  check_shape("maxpool2d", "out", out,
              {x.dim(0), x.dim(1), (x.dim(2) - kernel) / stride + 1, (x.dim(3) - kernel) / stride + 1});
  check_same_device("maxpool2d", {&x, &out});
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
          float m = window[0];
          for (int ky = 0; ky < kernel; ++ky)
            for (int kx = 0; kx < kernel; ++kx) {
              const float v = window[ky * w + kx];
              if (v > m || std::isnan(v)) m = v;  // once NaN, nothing compares greater: NaN sticks
            }
          dst[oy * ow + ox] = m;
        }
    }
  });
}

void maxpool2d(const Tensor& x, Tensor& out, int kernel, int stride) {
  check_args(x, out, kernel, stride);
  if (x.device().is_cuda()) no_cuda_kernel_yet("maxpool2d");
  cpu::maxpool2d(x, out, kernel, stride);
}

}  // namespace mfuser::kernels
