// CPU reference of the Mask2Former point losses (BCE with logits, naive dice) and their backward, and the
// device dispatch.
#include "kernels/bce_dice/bce_dice.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_inputs(const char* op, const Tensor& x, const Tensor& t) {
  check_f32(op, "x", x);
  check_f32(op, "t", t);
  MFUSER_CHECK(x.ndim() == 2 && x.dim(0) >= 1 && x.dim(1) >= 1, op, ": x ", x.str(), ": must be [N, P], N, P >= 1");
  check_shape(op, "t", t, x.shape());
  check_same_device(op, {&x, &t});
}

void check_forward(const char* op, const Tensor& x, const Tensor& t, const Tensor& loss) {
  check_inputs(op, x, t);
  check_f32(op, "loss", loss);
  check_shape(op, "loss", loss, Shape{});
  check_same_device(op, {&x, &loss});
}

void check_backward(const char* op, const Tensor& x, const Tensor& t, const Tensor& grad_loss, const Tensor& grad_x) {
  check_inputs(op, x, t);
  check_f32(op, "grad_loss", grad_loss);
  check_shape(op, "grad_loss", grad_loss, Shape{});
  check_f32(op, "grad_x", grad_x);
  check_shape(op, "grad_x", grad_x, x.shape());
  check_same_device(op, {&x, &grad_loss, &grad_x});
  MFUSER_CHECK(grad_x.raw_data() != x.raw_data() && grad_x.raw_data() != t.raw_data(), op,
               ": grad_x may not alias x or t");
}

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// Runs row_fn(n, x_row, t_row) for every row in parallel; rows are independent.
void for_rows(const Tensor& x, const Tensor& t, const std::function<void(int64_t, const float*, const float*)>& row_fn) {
  const int64_t points = x.dim(1);
  const float *px = x.data<float>(), *pt = t.data<float>();
  parallel_for(x.dim(0), std::max<int64_t>(1, (1 << 14) / points), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) row_fn(n, px + n * points, pt + n * points);
  });
}

// Per-row sums of one dice row: A = sum s t, S = sum s, T = sum t.
struct DiceSums {
  double a = 0, s = 0, t = 0;
};
DiceSums dice_sums(const float* x, const float* t, int64_t points) {
  DiceSums d;
  for (int64_t p = 0; p < points; ++p) {
    const double s = sigmoid(x[p]);
    d.a += s * t[p];
    d.s += s;
    d.t += t[p];
  }
  return d;
}

// Sum of per-row values, added in row order so the result does not depend on the thread count.
double ordered_sum(const std::vector<double>& v) {
  double sum = 0;
  for (double e : v) sum += e;
  return sum;
}

}  // namespace

void cpu::bce_with_logits_mean(const Tensor& x, const Tensor& t, Tensor& loss) {
  constexpr const char* op = "bce_with_logits_mean";
  check_forward(op, x, t, loss);
  check_host(op, x);
  const int64_t points = x.dim(1);
  std::vector<double> rows(size_t(x.dim(0)));
  for_rows(x, t, [&](int64_t n, const float* xr, const float* tr) {
    double sum = 0;
    for (int64_t p = 0; p < points; ++p) {
      const double v = xr[p];
      sum += std::max(v, 0.0) - v * tr[p] + std::log1p(std::exp(-std::fabs(v)));
    }
    rows[size_t(n)] = sum;
  });
  loss.data<float>()[0] = float(ordered_sum(rows) / double(x.numel()));
}

void cpu::bce_with_logits_mean_backward(const Tensor& x, const Tensor& t, const Tensor& grad_loss, Tensor& grad_x) {
  constexpr const char* op = "bce_with_logits_mean_backward";
  check_backward(op, x, t, grad_loss, grad_x);
  check_host(op, x);
  const int64_t points = x.dim(1);
  const double scale = double(grad_loss.data<float>()[0]) / double(x.numel());
  float* g = grad_x.data<float>();
  for_rows(x, t, [&](int64_t n, const float* xr, const float* tr) {
    for (int64_t p = 0; p < points; ++p) g[n * points + p] = float(scale * (sigmoid(xr[p]) - tr[p]));
  });
}

void cpu::dice_loss(const Tensor& x, const Tensor& t, float eps, Tensor& loss) {
  constexpr const char* op = "dice_loss";
  check_forward(op, x, t, loss);
  check_host(op, x);
  const int64_t points = x.dim(1);
  std::vector<double> rows(size_t(x.dim(0)));
  for_rows(x, t, [&](int64_t n, const float* xr, const float* tr) {
    const DiceSums d = dice_sums(xr, tr, points);
    rows[size_t(n)] = 1.0 - (2 * d.a + eps) / (d.s + d.t + eps);
  });
  loss.data<float>()[0] = float(ordered_sum(rows) / double(x.dim(0)));
}

void cpu::dice_loss_backward(const Tensor& x, const Tensor& t, float eps, const Tensor& grad_loss, Tensor& grad_x) {
  constexpr const char* op = "dice_loss_backward";
  check_backward(op, x, t, grad_loss, grad_x);
  check_host(op, x);
  const int64_t points = x.dim(1);
  const double scale = double(grad_loss.data<float>()[0]) / double(x.dim(0));
  float* g = grad_x.data<float>();
  for_rows(x, t, [&](int64_t n, const float* xr, const float* tr) {
    const DiceSums d = dice_sums(xr, tr, points);
    const double den = d.s + d.t + eps, num = 2 * d.a + eps;
    // d(1 - num/den)/ds_p = -(2 t_p den - num) / den^2; ds/dx = s (1 - s).
    const double f = -scale / (den * den);
    for (int64_t p = 0; p < points; ++p) {
      const double s = sigmoid(xr[p]);
      g[n * points + p] = float(f * (2 * tr[p] * den - num) * s * (1 - s));
    }
  });
}

void bce_with_logits_mean(const Tensor& x, const Tensor& t, Tensor& loss) {
  check_forward("bce_with_logits_mean", x, t, loss);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::bce_with_logits_mean(x, t, loss));
  cpu::bce_with_logits_mean(x, t, loss);
}

void bce_with_logits_mean_backward(const Tensor& x, const Tensor& t, const Tensor& grad_loss, Tensor& grad_x) {
  check_backward("bce_with_logits_mean_backward", x, t, grad_loss, grad_x);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::bce_with_logits_mean_backward(x, t, grad_loss, grad_x));
  cpu::bce_with_logits_mean_backward(x, t, grad_loss, grad_x);
}

void dice_loss(const Tensor& x, const Tensor& t, float eps, Tensor& loss) {
  check_forward("dice_loss", x, t, loss);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::dice_loss(x, t, eps, loss));
  cpu::dice_loss(x, t, eps, loss);
}

void dice_loss_backward(const Tensor& x, const Tensor& t, float eps, const Tensor& grad_loss, Tensor& grad_x) {
  check_backward("dice_loss_backward", x, t, grad_loss, grad_x);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::dice_loss_backward(x, t, eps, grad_loss, grad_x));
  cpu::dice_loss_backward(x, t, eps, grad_loss, grad_x);
}

}  // namespace mfuser::kernels
