// CPU reference of layernorm and its backward, and the device dispatch.
#include "kernels/layernorm/layernorm.h"

#include "kernels/common/checks.h"
#include "kernels/common/moments.h"
#include "kernels/common/row_block_sums.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& out, float eps) {
  check_float("layernorm", "x", x);
  check_float_like("layernorm", "weight", weight, x);
  check_float_like("layernorm", "bias", bias, x);
  check_float_like("layernorm", "out", out, x);
  MFUSER_CHECK(x.ndim() >= 1 && x.dim(-1) >= 1, "layernorm: x must have a non-empty last dim, got ", x.str());
  const int64_t d = x.dim(-1);
  check_shape("layernorm", "weight", weight, {d});
  check_shape("layernorm", "bias", bias, {d});
  check_shape("layernorm", "out", out, x.shape());
  MFUSER_CHECK(eps >= 0, "layernorm: eps must be >= 0, got ", eps);
  check_same_device("layernorm", {&x, &weight, &bias, &out});
}

void check_stats(const char* op, const Tensor& x, const Tensor& mean, const Tensor& rstd) {
  check_f32(op, "mean", mean);
  check_f32(op, "rstd", rstd);
  const int64_t rows = x.numel() / x.dim(-1);
  check_shape(op, "mean", mean, {rows});
  check_shape(op, "rstd", rstd, {rows});
  check_same_device(op, {&x, &mean, &rstd});
}

void check_backward_args(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                         const Tensor& grad_out, const Tensor& grad_x, const Tensor& grad_weight,
                         const Tensor& grad_bias, float eps) {
  constexpr const char* op = "layernorm_backward";
  check_float(op, "x", x);
  check_float_like(op, "weight", weight, x);
  check_float_like(op, "grad_out", grad_out, x);
  check_float_like(op, "grad_x", grad_x, x);
  MFUSER_CHECK(x.ndim() >= 1 && x.dim(-1) >= 1, op, ": x must have a non-empty last dim, got ", x.str());
  const int64_t d = x.dim(-1);
  check_shape(op, "weight", weight, {d});
  check_shape(op, "grad_out", grad_out, x.shape());
  check_shape(op, "grad_x", grad_x, x.shape());
  MFUSER_CHECK(mean.defined() == rstd.defined(), op, ": pass both saved mean and rstd or neither");
  if (mean.defined()) check_stats(op, x, mean, rstd);
  for (const Tensor* g : {&grad_weight, &grad_bias}) {
    if (!g->defined()) continue;
    check_float_like(op, g == &grad_weight ? "grad_weight" : "grad_bias", *g, x);
    check_shape(op, g == &grad_weight ? "grad_weight" : "grad_bias", *g, {d});
  }
  MFUSER_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  check_same_device(op, {&x, &weight, &mean, &rstd, &grad_out, &grad_x, &grad_weight, &grad_bias});
}

// Forward body; `mean_out` / `rstd_out` may be null (statistics not saved).
void layernorm_rows(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps,
                    float* mean_out, float* rstd_out) {
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
      if (mean_out) mean_out[r] = float(m.mean);
      if (rstd_out) rstd_out[r] = float(m.rstd);
    }
  });
}

}  // namespace

void cpu::layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps) {
  check_args(x, weight, bias, out, eps);
  check_host("layernorm", x);
  layernorm_rows(x, weight, bias, out, eps, nullptr, nullptr);
}

void cpu::layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps,
                    Tensor& mean, Tensor& rstd) {
  check_args(x, weight, bias, out, eps);
  check_stats("layernorm", x, mean, rstd);
  check_host("layernorm", x);
  layernorm_rows(x, weight, bias, out, eps, mean.data<float>(), rstd.data<float>());
}

void cpu::layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                             const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias,
                             float eps) {
  check_backward_args(x, weight, mean, rstd, grad_out, grad_x, grad_weight, grad_bias, eps);
  check_host("layernorm_backward", x);
  const int64_t d = x.dim(-1), rows = x.numel() / d;
  const float* xs = x.data<float>();
  const float* w = weight.data<float>();
  const float* dy = grad_out.data<float>();
  float* dx = grad_x.data<float>();
  const float* saved_mean = mean.defined() ? mean.data<float>() : nullptr;
  const float* saved_rstd = rstd.defined() ? rstd.data<float>() : nullptr;
  const bool want_params = grad_weight.defined() || grad_bias.defined();
  // Partial row sums: [0, d) grad_weight, [d, 2d) grad_bias.
  const std::vector<double> sums = row_block_sums(rows, want_params ? 2 * d : 0, [&](int64_t begin, int64_t end,
                                                                                      double* acc) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = xs + r * d;
      const float* dyr = dy + r * d;
      const Moments m = saved_mean ? Moments{saved_mean[r], saved_rstd[r]} : moments(xr, d, eps);
      double sum_g = 0, sum_g_xhat = 0;
      for (int64_t i = 0; i < d; ++i) {
        const double g = double(dyr[i]) * w[i];
        sum_g += g;
        sum_g_xhat += g * (xr[i] - m.mean) * m.rstd;
      }
      const double mean_g = sum_g / double(d), mean_g_xhat = sum_g_xhat / double(d);
      float* dxr = dx + r * d;
      for (int64_t i = 0; i < d; ++i) {
        const double xhat = (xr[i] - m.mean) * m.rstd;
        dxr[i] = float(m.rstd * (double(dyr[i]) * w[i] - mean_g - xhat * mean_g_xhat));
        if (want_params) {
          acc[i] += double(dyr[i]) * xhat;
          acc[d + i] += dyr[i];
        }
      }
    }
  });
  if (grad_weight.defined()) {
    float* gw = grad_weight.data<float>();
    for (int64_t i = 0; i < d; ++i) gw[i] = float(sums[size_t(i)]);
  }
  if (grad_bias.defined()) {
    float* gb = grad_bias.data<float>();
    for (int64_t i = 0; i < d; ++i) gb[i] = float(sums[size_t(d + i)]);
  }
}

void layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps) {
  check_args(x, weight, bias, out, eps);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::layernorm(x, weight, bias, out, eps));
  cpu::layernorm(x, weight, bias, out, eps);
}

void layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps, Tensor& mean,
               Tensor& rstd) {
  check_args(x, weight, bias, out, eps);
  check_stats("layernorm", x, mean, rstd);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::layernorm(x, weight, bias, out, eps, mean, rstd));
  cpu::layernorm(x, weight, bias, out, eps, mean, rstd);
}

void layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                        const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias, float eps) {
  check_backward_args(x, weight, mean, rstd, grad_out, grad_x, grad_weight, grad_bias, eps);
  if (x.device().is_cuda())
    return MFUSER_CUDA_KERNEL(
        cuda::layernorm_backward(x, weight, mean, rstd, grad_out, grad_x, grad_weight, grad_bias, eps));
  cpu::layernorm_backward(x, weight, mean, rstd, grad_out, grad_x, grad_weight, grad_bias, eps);
}

}  // namespace mfuser::kernels
