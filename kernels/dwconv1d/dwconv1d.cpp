// CPU reference of dwconv1d (tokens-major, 'same' padding) and its backward, and the device dispatch.
#include "kernels/dwconv1d/dwconv1d.h"

#include <algorithm>
#include <vector>

#include "kernels/common/checks.h"
#include "kernels/common/row_block_sums.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& out) {
  check_float("dwconv1d", "x", x);
  check_float_like("dwconv1d", "weight", weight, x);
  check_float_like("dwconv1d", "out", out, x);
  MFUSER_CHECK(x.ndim() == 3, "dwconv1d: x must be [B, L, C], got ", x.str());
  MFUSER_CHECK(weight.ndim() == 3 && weight.dim(0) == x.dim(2) && weight.dim(1) == 1 && weight.dim(2) >= 1,
               "dwconv1d: weight must be [C, 1, K] with C = ", x.dim(2), " channels, got ", weight.str());
  if (bias.defined()) {
    check_float_like("dwconv1d", "bias", bias, x);
    check_shape("dwconv1d", "bias", bias, {x.dim(2)});
  }
  check_shape("dwconv1d", "out", out, x.shape());
  check_same_device("dwconv1d", {&x, &weight, &bias, &out});
}

void check_backward_args(const Tensor& x, const Tensor& weight, const Tensor& grad_out, const Tensor& grad_x,
                         const Tensor& grad_weight, const Tensor& grad_bias) {
  constexpr const char* op = "dwconv1d_backward";
  check_float_like(op, "grad_out", grad_out, x);
  check_args(x, weight, Tensor(), grad_out);  // grad_out has the forward output's shape
  const Tensor* grads[] = {&grad_x, &grad_weight, &grad_bias};
  const char* names[] = {"grad_x", "grad_weight", "grad_bias"};
  const Shape shapes[] = {x.shape(), weight.shape(), {x.dim(2)}};
  for (int i = 0; i < 3; ++i) {
    if (!grads[i]->defined()) continue;
    check_float_like(op, names[i], *grads[i], x);
    check_shape(op, names[i], *grads[i], shapes[i]);
  }
  check_same_device(op, {&x, &grad_out, &grad_x, &grad_weight, &grad_bias});
}

// Weight [C, 1, K] as taps [K, C], so the inner loops run over contiguous channels.
std::vector<float> taps_of(const Tensor& weight) {
  const int64_t ch = weight.dim(0), k = weight.dim(2);
  std::vector<float> taps(size_t(k * ch));
  for (int64_t c = 0; c < ch; ++c)
    for (int64_t j = 0; j < k; ++j) taps[size_t(j * ch + c)] = weight.data<float>()[c * k + j];
  return taps;
}

}  // namespace

void cpu::dwconv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out) {
  check_args(x, weight, bias, out);
  check_host("dwconv1d", x);
  const int64_t len = x.dim(1), ch = x.dim(2), k = weight.dim(2), left = (k - 1) / 2;
  const std::vector<float> taps = taps_of(weight);
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

void cpu::dwconv1d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                            Tensor& grad_weight, Tensor& grad_bias) {
  check_backward_args(x, weight, grad_out, grad_x, grad_weight, grad_bias);
  check_host("dwconv1d_backward", x);
  const int64_t len = x.dim(1), ch = x.dim(2), k = weight.dim(2), left = (k - 1) / 2, rows = x.dim(0) * len;
  const float* in = x.data<float>();
  const float* dy = grad_out.data<float>();
  if (grad_x.defined()) {
    const std::vector<float> taps = taps_of(weight);
    float* dx = grad_x.data<float>();
    // Input token m feeds output m - j + left through tap j.
    parallel_for(rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t m = row % len;
        float* dst = dx + row * ch;
        std::fill_n(dst, ch, 0.f);
        for (int64_t j = std::max<int64_t>(0, m + left - len + 1); j < std::min(k, m + left + 1); ++j) {
          const float* src = dy + (row - j + left) * ch;
          const float* tap = taps.data() + j * ch;
          for (int64_t c = 0; c < ch; ++c) dst[c] += tap[c] * src[c];
        }
      }
    });
  }
  if (!grad_weight.defined() && !grad_bias.defined()) return;
  // Sums over every (b, l) row: [j * C + c] for tap j of grad_weight, [K * C + c] for grad_bias.
  const std::vector<double> sums = row_block_sums(rows, (k + 1) * ch, [&](int64_t begin, int64_t end, double* acc) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t l = row % len;
      const float* g = dy + row * ch;
      for (int64_t j = std::max<int64_t>(0, left - l); j < std::min(k, len - l + left); ++j) {
        const float* src = in + (row + j - left) * ch;
        for (int64_t c = 0; c < ch; ++c) acc[j * ch + c] += double(g[c]) * src[c];
      }
      for (int64_t c = 0; c < ch; ++c) acc[k * ch + c] += g[c];
    }
  });
  if (grad_weight.defined())
    for (int64_t c = 0; c < ch; ++c)
      for (int64_t j = 0; j < k; ++j) grad_weight.data<float>()[c * k + j] = float(sums[size_t(j * ch + c)]);
  if (grad_bias.defined())
    for (int64_t c = 0; c < ch; ++c) grad_bias.data<float>()[c] = float(sums[size_t(k * ch + c)]);
}

void dwconv1d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                       Tensor& grad_weight, Tensor& grad_bias) {
  check_backward_args(x, weight, grad_out, grad_x, grad_weight, grad_bias);
  if (x.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::dwconv1d_backward(x, weight, grad_out, grad_x, grad_weight, grad_bias));
  cpu::dwconv1d_backward(x, weight, grad_out, grad_x, grad_weight, grad_bias);
}

void dwconv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out) {
  check_args(x, weight, bias, out);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::dwconv1d(x, weight, bias, out));
  cpu::dwconv1d(x, weight, bias, out);
}

}  // namespace mfuser::kernels
