// CPU reference of rmsnorm_gated, and the device dispatch.
#include "kernels/rmsnorm_gated/rmsnorm_gated.h"

#include <cmath>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& x, const Tensor& z, const Tensor& weight, const Tensor& out, float eps) {
  check_f32("rmsnorm_gated", "x", x);
  check_f32("rmsnorm_gated", "z", z);
  check_f32("rmsnorm_gated", "weight", weight);
  check_f32("rmsnorm_gated", "out", out);
  MFUSER_CHECK(x.ndim() >= 1 && x.dim(-1) >= 1, "rmsnorm_gated: x must have a non-empty last dim, got ", x.str());
  check_shape("rmsnorm_gated", "z", z, x.shape());
  check_shape("rmsnorm_gated", "weight", weight, {x.dim(-1)});
  check_shape("rmsnorm_gated", "out", out, x.shape());
  MFUSER_CHECK(eps >= 0, "rmsnorm_gated: eps must be >= 0, got ", eps);
  check_same_device("rmsnorm_gated", {&x, &z, &weight, &out});
}

}  // namespace

void cpu::rmsnorm_gated(const Tensor& x, const Tensor& z, const Tensor& weight, Tensor& out, float eps) {
  check_args(x, z, weight, out, eps);
  check_host("rmsnorm_gated", x);
  const int64_t d = x.dim(-1), rows = x.numel() / d;
  const float* xs = x.data<float>();
  const float* zs = z.data<float>();
  const float* w = weight.data<float>();
  float* y = out.data<float>();
  parallel_for(rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = xs + r * d;
      const float* zr = zs + r * d;
      float* yr = y + r * d;
      double sq = 0;
      for (int64_t i = 0; i < d; ++i) sq += double(xr[i]) * xr[i];
      const float rstd = float(1.0 / std::sqrt(sq / double(d) + eps));
      for (int64_t i = 0; i < d; ++i) yr[i] = xr[i] * rstd * w[i] * (zr[i] / (1.f + std::exp(-zr[i])));
    }
  });
}

void rmsnorm_gated(const Tensor& x, const Tensor& z, const Tensor& weight, Tensor& out, float eps) {
  check_args(x, z, weight, out, eps);
  if (x.device().is_cuda()) no_cuda_kernel_yet("rmsnorm_gated");
  cpu::rmsnorm_gated(x, z, weight, out, eps);
}

}  // namespace mfuser::kernels
