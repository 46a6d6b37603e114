// CPU reference of groupnorm and its backward, and the device dispatch.
#include "kernels/groupnorm/groupnorm.h"

#include <vector>

#include "kernels/common/checks.h"
#include "kernels/common/moments.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& out, int num_groups,
                float eps) {
  check_float("groupnorm", "x", x);
  check_float_like("groupnorm", "weight", weight, x);
  check_float_like("groupnorm", "bias", bias, x);
  check_float_like("groupnorm", "out", out, x);
  MFUSER_CHECK(x.ndim() >= 2, "groupnorm: x must be [N, C, *spatial], got ", x.str());
  const int64_t c = x.dim(1);
  MFUSER_CHECK(num_groups >= 1 && c % num_groups == 0, "groupnorm: ", num_groups,
               " groups do not divide the channels of ", x.str());
  check_shape("groupnorm", "weight", weight, {c});
  check_shape("groupnorm", "bias", bias, {c});
  check_shape("groupnorm", "out", out, x.shape());
  MFUSER_CHECK(eps >= 0, "groupnorm: eps must be >= 0, got ", eps);
  check_same_device("groupnorm", {&x, &weight, &bias, &out});
}

void check_backward_args(const Tensor& x, const Tensor& weight, const Tensor& grad_out, const Tensor& grad_x,
                         const Tensor& grad_weight, const Tensor& grad_bias, int num_groups, float eps) {
  constexpr const char* op = "groupnorm_backward";
  // The forward's checks cover x, weight, grad_x, num_groups and eps (weight stands in for bias, grad_x for out).
  check_args(x, weight, weight, grad_x, num_groups, eps);
  check_float_like(op, "grad_out", grad_out, x);
  check_shape(op, "grad_out", grad_out, x.shape());
  for (const Tensor* g : {&grad_weight, &grad_bias}) {
    if (!g->defined()) continue;
    check_float_like(op, g == &grad_weight ? "grad_weight" : "grad_bias", *g, x);
    check_shape(op, g == &grad_weight ? "grad_weight" : "grad_bias", *g, {x.dim(1)});
  }
  check_same_device(op, {&x, &grad_out, &grad_x, &grad_weight, &grad_bias});
}

}  // namespace

void cpu::groupnorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int num_groups,
                    float eps) {
  check_args(x, weight, bias, out, num_groups, eps);
  check_host("groupnorm", x);
  if (x.numel() == 0) return;
  const int64_t n = x.dim(0), c = x.dim(1), spatial = x.numel() / (n * c);
  const int64_t channels_per_group = c / num_groups, group_size = channels_per_group * spatial;
  const float* in = x.data<float>();
  const float* w = weight.data<float>();
  const float* b = bias.data<float>();
  float* y = out.data<float>();
  // One (image, group) block per task: a group's channels are contiguous in NC* layout.
  parallel_for(n * num_groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first_channel = (block % num_groups) * channels_per_group;
      const float* xg = in + block * group_size;
      float* yg = y + block * group_size;
      const Moments m = moments(xg, group_size, eps);
      for (int64_t k = 0; k < channels_per_group; ++k) {
        const float scale = w[first_channel + k], shift = b[first_channel + k];
        for (int64_t i = k * spatial; i < (k + 1) * spatial; ++i)
          yg[i] = float((xg[i] - m.mean) * m.rstd) * scale + shift;
      }
    }
  });
}

void cpu::groupnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                             Tensor& grad_weight, Tensor& grad_bias, int num_groups, float eps) {
  check_backward_args(x, weight, grad_out, grad_x, grad_weight, grad_bias, num_groups, eps);
  check_host("groupnorm_backward", x);
  const int64_t n = x.dim(0), c = x.dim(1);
  // Empty x: grad_x is empty and the parameter gradients are empty sums.
  const int64_t spatial = x.numel() == 0 ? 0 : x.numel() / (n * c);
  const int64_t channels_per_group = c / num_groups, group_size = channels_per_group * spatial;
  const float* xs = x.data<float>();
  const float* w = weight.data<float>();
  const float* dy = grad_out.data<float>();
  float* dx = grad_x.data<float>();
  // Per (image, channel): sum of grad_out * xhat and of grad_out. Each block owns its channels of one image,
  // so the blocks run in parallel without sharing; the images are added in order afterwards.
  std::vector<double> dw_nc(size_t(n * c), 0.0), db_nc(size_t(n * c), 0.0);
  parallel_for(spatial == 0 ? 0 : n * num_groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first_channel = (block % num_groups) * channels_per_group;
      const float* xg = xs + block * group_size;
      const float* dyg = dy + block * group_size;
      const Moments m = moments(xg, group_size, eps);
      double sum_g = 0, sum_g_xhat = 0;
      for (int64_t k = 0; k < channels_per_group; ++k) {
        double sum_dy = 0, sum_dy_xhat = 0;
        for (int64_t i = k * spatial; i < (k + 1) * spatial; ++i) {
          const double xhat = (xg[i] - m.mean) * m.rstd;
          sum_dy += dyg[i];
          sum_dy_xhat += dyg[i] * xhat;
        }
        const double scale = w[first_channel + k];
        sum_g += scale * sum_dy;
        sum_g_xhat += scale * sum_dy_xhat;
        const size_t nc = size_t(block / num_groups * c + first_channel + k);
        db_nc[nc] = sum_dy;
        dw_nc[nc] = sum_dy_xhat;
      }
      const double mean_g = sum_g / double(group_size), mean_g_xhat = sum_g_xhat / double(group_size);
      float* dxg = dx + block * group_size;
      for (int64_t k = 0; k < channels_per_group; ++k) {
        const double scale = w[first_channel + k];
        for (int64_t i = k * spatial; i < (k + 1) * spatial; ++i) {
          const double xhat = (xg[i] - m.mean) * m.rstd;
          dxg[i] = float(m.rstd * (scale * dyg[i] - mean_g - xhat * mean_g_xhat));
        }
      }
    }
  });
  for (Tensor* grad : {&grad_weight, &grad_bias}) {
    if (!grad->defined()) continue;
    const std::vector<double>& per_image = grad == &grad_weight ? dw_nc : db_nc;
    float* out = grad->data<float>();
    for (int64_t ch = 0; ch < c; ++ch) {
      double sum = 0;
      for (int64_t img = 0; img < n; ++img) sum += per_image[size_t(img * c + ch)];
      out[ch] = float(sum);
    }
  }
}

void groupnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                        Tensor& grad_weight, Tensor& grad_bias, int num_groups, float eps) {
  check_backward_args(x, weight, grad_out, grad_x, grad_weight, grad_bias, num_groups, eps);
  if (x.device().is_cuda())
    return MFUSER_CUDA_KERNEL(
        cuda::groupnorm_backward(x, weight, grad_out, grad_x, grad_weight, grad_bias, num_groups, eps));
  cpu::groupnorm_backward(x, weight, grad_out, grad_x, grad_weight, grad_bias, num_groups, eps);
}

void groupnorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int num_groups, float eps) {
  check_args(x, weight, bias, out, num_groups, eps);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::groupnorm(x, weight, bias, out, num_groups, eps));
  cpu::groupnorm(x, weight, bias, out, num_groups, eps);
}

}  // namespace mfuser::kernels
