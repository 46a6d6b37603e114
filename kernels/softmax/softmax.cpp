// CPU reference of the (masked) softmax, and the device dispatch.
#include "kernels/softmax/softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/common/checks.h"
#include "kernels/elementwise/elementwise.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& x, const Tensor& mask, const Tensor& out) {
  check_float("softmax", "x", x);
  check_float_like("softmax", "out", out, x);
  check_shape("softmax", "out", out, x.shape());
  check_same_device("softmax", {&x, &out});
  MFUSER_CHECK(x.ndim() >= 1, "softmax: ", x.str(), ": needs at least one dim");
  if (!mask.defined()) return;
  MFUSER_CHECK(mask.dtype() == x.dtype() || mask.dtype() == DType::boolean, "softmax: mask ", mask.str(), ": must be ",
               dtype_name(x.dtype()), " (additive, x's dtype) or boolean (true = masked out)");
  MFUSER_CHECK(mask.device() == x.device(), "softmax: ", x.str(), " with mask ", mask.str(), ": devices differ");
  detail::BroadcastIndex("softmax", x.shape(), mask.shape());  // throws when the mask does not broadcast
}

// Masked logits of one row, written into `row`. The row's mask starts at element `mask_offset` and advances
// by `step` per logit (0 when the mask is broadcast along the row).
void masked_logits(const float* x, const Tensor& mask, int64_t mask_offset, int64_t step, int64_t n, float* row) {
  if (!mask.defined()) {
    std::copy(x, x + n, row);
  } else if (mask.dtype() == DType::boolean) {
    const bool* m = mask.data<bool>() + mask_offset;
    for (int64_t j = 0; j < n; ++j) row[j] = m[j * step] ? -std::numeric_limits<float>::infinity() : x[j];
  } else {
    const float* m = mask.data<float>() + mask_offset;
    for (int64_t j = 0; j < n; ++j) row[j] = x[j] + m[j * step];
  }
}

}  // namespace

void cpu::softmax(const Tensor& x, const Tensor& mask, Tensor& out) {
  check_args(x, mask, out);
  detail::check_host("softmax", x);
  const int64_t cols = x.dim(-1);
  if (x.numel() == 0) return;
  const int64_t rows = x.numel() / cols;
  const detail::BroadcastIndex index("softmax", x.shape(), mask.defined() ? mask.shape() : Shape{});
  const float* px = x.data<float>();
  float* po = out.data<float>();
  parallel_for(rows, std::max<int64_t>(1, (1 << 14) / cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = po + r * cols;
      masked_logits(px + r * cols, mask, index.offset(r * cols), index.run_stride(), cols, row);
      const float max = *std::max_element(row, row + cols);
      // A fully masked row has max = -inf, so every exp(-inf - -inf) is NaN: PyTorch's NaN row.
      double sum = 0;
      for (int64_t j = 0; j < cols; ++j) {
        row[j] = std::exp(row[j] - max);
        sum += row[j];
      }
      for (int64_t j = 0; j < cols; ++j) row[j] = float(row[j] / sum);
    }
  });
}

namespace {

void check_backward(const Tensor& y, const Tensor& grad_out, const Tensor& grad_in) {
  detail::check_same_float("softmax_backward", y, grad_in);
  detail::check_same_float("softmax_backward", grad_out, grad_in);
  MFUSER_CHECK(y.ndim() >= 1, "softmax_backward: ", y.str(), ": needs at least one dim");
}

}  // namespace

void cpu::softmax_backward(const Tensor& y, const Tensor& grad_out, Tensor& grad_in) {
  check_backward(y, grad_out, grad_in);
  detail::check_host("softmax_backward", y);
  const int64_t cols = y.dim(-1);
  if (y.numel() == 0) return;
  const int64_t rows = y.numel() / cols;
  const float* py = y.data<float>();
  const float* pg = grad_out.data<float>();
  float* po = grad_in.data<float>();
  parallel_for(rows, std::max<int64_t>(1, (1 << 14) / cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float *yr = py + r * cols, *gr = pg + r * cols;
      double dot = 0;
      for (int64_t j = 0; j < cols; ++j) dot += double(gr[j]) * yr[j];
      // Element j reads y_j and g_j before writing grad_in_j, so grad_in may alias either.
      float* out = po + r * cols;
      for (int64_t j = 0; j < cols; ++j) out[j] = float(yr[j] * (gr[j] - dot));
    }
  });
}

void softmax_backward(const Tensor& y, const Tensor& grad_out, Tensor& grad_in) {
  check_backward(y, grad_out, grad_in);
  if (y.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::softmax_backward(y, grad_out, grad_in));
  cpu::softmax_backward(y, grad_out, grad_in);
}

void softmax(const Tensor& x, const Tensor& mask, Tensor& out) {
  check_args(x, mask, out);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::softmax(x, mask, out));
  cpu::softmax(x, mask, out);
}

}  // namespace mfuser::kernels
