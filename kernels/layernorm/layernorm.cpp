// CPU reference of layernorm, and the device dispatch.
#include "kernels/layernorm/layernorm.h"

#include "kernels/common/checks.h"
#include "kernels/common/moments.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& out, float eps) {
  check_f32("layernorm", "x", x);
  check_f32("layernorm", "weight", weight);
  check_f32("layernorm", "bias", bias);
  check_f32("layernorm", "out", out);
  MFUSER_CHECK(x.ndim() >= 1 && x.dim(-1) >= 1, "layernorm: x must have a non-empty last dim, got ", x.str());
  const int64_t d = x.dim(-1);
  check_shape("layernorm", "weight", weight, {d});
  check_shape("layernorm", "bias", bias, {d});
  check_shape("layernorm", "out", out, x.shape());
  MFUSER_CHECK(eps >= 0, "layernorm: eps must be >= 0, got ", eps);
  check_same_device("layernorm", {&x, &weight, &bias, &out});
}

}  // namespace

void cpu::layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps) {
  check_args(x, weight, bias, out, eps);
  check_host("layernorm", x);
  const int64_t d = x.dim(-1), rows = x.numel() / d;
  const float* in = x.data<float>();
  const float* w = weight.data<float>();
  const float* b = bias.data<float>();
  float* y = out.data<float>();
  parallel_for(rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = in + r * d;
      float* yr = y + r * d;
      const Moments m = moments(xr, d, eps);
      for (int64_t i = 0; i < d; ++i) yr[i] = float((xr[i] - m.mean) * m.rstd) * w[i] + b[i];
    }
  });
}

void layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps) {
  check_args(x, weight, bias, out, eps);
  if (x.device().is_cuda()) no_cuda_kernel_yet("layernorm");
  cpu::layernorm(x, weight, bias, out, eps);
}

}  // namespace mfuser::kernels
