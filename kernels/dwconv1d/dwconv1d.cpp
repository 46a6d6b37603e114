// CPU reference of dwconv1d (tokens-major, 'same' padding), and the device dispatch.
#include "kernels/dwconv1d/dwconv1d.h"

#include <algorithm>
#include <vector>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& out) {
  check_f32("dwconv1d", "x", x);
  check_f32("dwconv1d", "weight", weight);
  check_f32("dwconv1d", "out", out);
  MFUSER_CHECK(x.ndim() == 3, "dwconv1d: x must be [B, L, C], got ", x.str());
  MFUSER_CHECK(weight.ndim() == 3 && weight.dim(0) == x.dim(2) && weight.dim(1) == 1 && weight.dim(2) >= 1,
               "dwconv1d: weight must be [C, 1, K] with C = ", x.dim(2), " channels, got ", weight.str());
  if (bias.defined()) {
    check_f32("dwconv1d", "bias", bias);
    check_shape("dwconv1d", "bias", bias, {x.dim(2)});
  }
  check_shape("dwconv1d", "out", out, x.shape());
  check_same_device("dwconv1d", {&x, &weight, &bias, &out});
}

}  // namespace

void cpu::dwconv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out) {
  check_args(x, weight, bias, out);
  check_host("dwconv1d", x);
  const int64_t len = x.dim(1), ch = x.dim(2), k = weight.dim(2), left = (k - 1) / 2;
  // Taps as [K, C], so the inner loop runs over contiguous channels of x, weight and out alike.
  std::vector<float> taps(size_t(k * ch));
  for (int64_t c = 0; c < ch; ++c)
    for (int64_t j = 0; j < k; ++j) taps[j * ch + c] = weight.data<float>()[c * k + j];
  const float* in = x.data<float>();
  const float* b = bias.defined() ? bias.data<float>() : nullptr;
  float* y = out.data<float>();
  // One output token per iteration; its K source tokens are rows l - left .. l - left + K - 1 of its sequence.
  parallel_for(x.dim(0) * len, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t l = row % len;
      float* dst = y + row * ch;
      if (b)
        std::copy_n(b, ch, dst);
      else
        std::fill_n(dst, ch, 0.f);
      for (int64_t j = std::max<int64_t>(0, left - l); j < std::min(k, len - l + left); ++j) {
        const float* src = in + (row + j - left) * ch;
        const float* tap = taps.data() + j * ch;
        for (int64_t c = 0; c < ch; ++c) dst[c] += tap[c] * src[c];
      }
    }
  });
}

void dwconv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out) {
  check_args(x, weight, bias, out);
  if (x.device().is_cuda()) no_cuda_kernel_yet("dwconv1d");
  cpu::dwconv1d(x, weight, bias, out);
}

}  // namespace mfuser::kernels
