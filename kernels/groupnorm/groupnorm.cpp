// CPU reference of groupnorm, and the device dispatch.
#include "kernels/groupnorm/groupnorm.h"

#include "kernels/common/checks.h"
#include "kernels/common/moments.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& out, int num_groups,
                float eps) {
  check_f32("groupnorm", "x", x);
  check_f32("groupnorm", "weight", weight);
  check_f32("groupnorm", "bias", bias);
  check_f32("groupnorm", "out", out);
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

void groupnorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int num_groups, float eps) {
  check_args(x, weight, bias, out, num_groups, eps);
  if (x.device().is_cuda()) no_cuda_kernel_yet("groupnorm");
  cpu::groupnorm(x, weight, bias, out, num_groups, eps);
}

}  // namespace mfuser::kernels
