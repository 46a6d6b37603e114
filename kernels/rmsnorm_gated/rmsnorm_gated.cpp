// CPU reference of rmsnorm_gated, and the device dispatch.
#include "kernels/rmsnorm_gated/rmsnorm_gated.h"

#include <cmath>

#include "kernels/common/checks.h"
#include "kernels/common/row_block_sums.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& x, const Tensor& z, const Tensor& weight, const Tensor& out, float eps) {
  check_float("rmsnorm_gated", "x", x);
  check_float_like("rmsnorm_gated", "z", z, x);
  check_float_like("rmsnorm_gated", "weight", weight, x);
  check_float_like("rmsnorm_gated", "out", out, x);
  MFUSER_CHECK(x.ndim() >= 1 && x.dim(-1) >= 1, "rmsnorm_gated: x must have a non-empty last dim, got ", x.str());
  check_shape("rmsnorm_gated", "z", z, x.shape());
  check_shape("rmsnorm_gated", "weight", weight, {x.dim(-1)});
  check_shape("rmsnorm_gated", "out", out, x.shape());
  MFUSER_CHECK(eps >= 0, "rmsnorm_gated: eps must be >= 0, got ", eps);
  check_same_device("rmsnorm_gated", {&x, &z, &weight, &out});
}

void check_backward_args(const Tensor& x, const Tensor& z, const Tensor& weight, const Tensor& grad_out,
                         const Tensor& grad_x, const Tensor& grad_z, const Tensor& grad_weight, float eps) {
  constexpr const char* op = "rmsnorm_gated_backward";
  check_float(op, "x", x);
  check_float_like(op, "z", z, x);
  check_float_like(op, "weight", weight, x);
  check_float_like(op, "grad_out", grad_out, x);
  check_float_like(op, "grad_x", grad_x, x);
  check_float_like(op, "grad_z", grad_z, x);
  MFUSER_CHECK(x.ndim() >= 1 && x.dim(-1) >= 1, op, ": x must have a non-empty last dim, got ", x.str());
  check_shape(op, "z", z, x.shape());
  check_shape(op, "weight", weight, {x.dim(-1)});
  check_shape(op, "grad_out", grad_out, x.shape());
  check_shape(op, "grad_x", grad_x, x.shape());
  check_shape(op, "grad_z", grad_z, x.shape());
  if (grad_weight.defined()) {
    check_float_like(op, "grad_weight", grad_weight, x);
    check_shape(op, "grad_weight", grad_weight, {x.dim(-1)});
  }
  MFUSER_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  check_same_device(op, {&x, &z, &weight, &grad_out, &grad_x, &grad_z, &grad_weight});
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

void cpu::rmsnorm_gated_backward(const Tensor& x, const Tensor& z, const Tensor& weight, const Tensor& grad_out,
                                 Tensor& grad_x, Tensor& grad_z, Tensor& grad_weight, float eps) {
  check_backward_args(x, z, weight, grad_out, grad_x, grad_z, grad_weight, eps);
  check_host("rmsnorm_gated_backward", x);
  const int64_t d = x.dim(-1), rows = x.numel() / d;
  const float* xs = x.data<float>();
  const float* zs = z.data<float>();
  const float* w = weight.data<float>();
  const float* dy = grad_out.data<float>();
  float* dx = grad_x.data<float>();
  float* dz = grad_z.data<float>();
  const bool want_weight = grad_weight.defined();
  const std::vector<double> sums = row_block_sums(rows, want_weight ? d : 0, [&](int64_t begin, int64_t end,
                                                                                double* acc) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = xs + r * d;
      const float* zr = zs + r * d;
      const float* dyr = dy + r * d;
      double sq = 0, sum_gx = 0;
      for (int64_t i = 0; i < d; ++i) {
        const double sig = 1.0 / (1.0 + std::exp(-double(zr[i])));
        sq += double(xr[i]) * xr[i];
        sum_gx += double(dyr[i]) * w[i] * zr[i] * sig * xr[i];
      }
      const double rstd = 1.0 / std::sqrt(sq / double(d) + eps);
      const double x_coef = rstd * rstd * rstd * sum_gx / double(d);
      for (int64_t i = 0; i < d; ++i) {
        const double sig = 1.0 / (1.0 + std::exp(-double(zr[i])));
        const double silu = zr[i] * sig, xn = xr[i] * rstd;
        dx[r * d + i] = float(rstd * dyr[i] * w[i] * silu - xr[i] * x_coef);
        dz[r * d + i] = float(dyr[i] * xn * w[i] * sig * (1.0 + zr[i] * (1.0 - sig)));
        if (want_weight) acc[i] += dyr[i] * xn * silu;
      }
    }
  });
  if (want_weight) {
    float* gw = grad_weight.data<float>();
    for (int64_t i = 0; i < d; ++i) gw[i] = float(sums[size_t(i)]);
  }
}

void rmsnorm_gated_backward(const Tensor& x, const Tensor& z, const Tensor& weight, const Tensor& grad_out,
                            Tensor& grad_x, Tensor& grad_z, Tensor& grad_weight, float eps) {
  check_backward_args(x, z, weight, grad_out, grad_x, grad_z, grad_weight, eps);
  if (x.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::rmsnorm_gated_backward(x, z, weight, grad_out, grad_x, grad_z, grad_weight, eps));
  cpu::rmsnorm_gated_backward(x, z, weight, grad_out, grad_x, grad_z, grad_weight, eps);
}

void rmsnorm_gated(const Tensor& x, const Tensor& z, const Tensor& weight, Tensor& out, float eps) {
  check_args(x, z, weight, out, eps);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::rmsnorm_gated(x, z, weight, out, eps));
  cpu::rmsnorm_gated(x, z, weight, out, eps);
}

}  // namespace mfuser::kernels
