// CPU reference of batchnorm (inference), and the device dispatch.
#include "kernels/batchnorm/batchnorm.h"

#include <cmath>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                const Tensor& bias, const Tensor& out, float eps) {
  check_f32("batchnorm", "x", x);
  check_f32("batchnorm", "running_mean", running_mean);
  check_f32("batchnorm", "running_var", running_var);
  check_f32("batchnorm", "weight", weight);
  check_f32("batchnorm", "bias", bias);
  check_f32("batchnorm", "out", out);
  MFUSER_CHECK(x.ndim() >= 2, "batchnorm: x must be [N, C, *spatial], got ", x.str());
  const int64_t c = x.dim(1);
  check_shape("batchnorm", "running_mean", running_mean, {c});
  check_shape("batchnorm", "running_var", running_var, {c});
  check_shape("batchnorm", "weight", weight, {c});
  check_shape("batchnorm", "bias", bias, {c});
  check_shape("batchnorm", "out", out, x.shape());
  MFUSER_CHECK(eps >= 0, "batchnorm: eps must be >= 0, got ", eps);
  check_same_device("batchnorm", {&x, &running_mean, &running_var, &weight, &bias, &out});
}

}  // namespace

void cpu::batchnorm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                    const Tensor& bias, Tensor& out, float eps) {
  check_args(x, running_mean, running_var, weight, bias, out, eps);
  check_host("batchnorm", x);
  if (x.numel() == 0) return;
  const int64_t c = x.dim(1), spatial = x.numel() / (x.dim(0) * c);
  const float* in = x.data<float>();
  const float* mean = running_mean.data<float>();
  const float* var = running_var.data<float>();
  const float* w = weight.data<float>();
  const float* b = bias.data<float>();
  float* y = out.data<float>();
  // One (image, channel) plane per task.
  parallel_for(x.dim(0) * c, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t ch = plane % c;
      const float scale = float(w[ch] / std::sqrt(double(var[ch]) + eps)), m = mean[ch], shift = b[ch];
      const float* xp = in + plane * spatial;
      float* yp = y + plane * spatial;
      for (int64_t i = 0; i < spatial; ++i) yp[i] = (xp[i] - m) * scale + shift;
    }
  });
}

void batchnorm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
               const Tensor& bias, Tensor& out, float eps) {
  check_args(x, running_mean, running_var, weight, bias, out, eps);
  if (x.device().is_cuda()) no_cuda_kernel_yet("batchnorm");
  cpu::batchnorm(x, running_mean, running_var, weight, bias, out, eps);
}

}  // namespace mfuser::kernels
