// CPU reference of linear's backward (two gemms and a column sum), and the device dispatch.
#include <algorithm>
#include <vector>

#include "kernels/common/checks.h"
#include "kernels/gemm/gemm.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

constexpr const char* kOp = "linear_backward";

void check_linear_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_y, const Tensor& grad_x,
                           const Tensor& grad_weight, const Tensor& grad_bias) {
  check_float(kOp, "grad_y", grad_y);
  check_float_like(kOp, "weight", weight, grad_y);
  MFUSER_CHECK(weight.ndim() == 2 && grad_y.ndim() >= 1 && grad_y.dim(-1) == weight.dim(0), kOp, ": grad_y ",
               grad_y.str(), " and weight ", weight.str(), ": need grad_y [..., N] and weight [N, K]");
  Shape x_shape = grad_y.shape();
  x_shape[-1] = weight.dim(1);
  // Optional outputs: undefined, or grad_y's dtype and the expected shape.
  const auto check_optional = [&](const char* arg, const Tensor& t, const Shape& expected) {
    if (!t.defined()) return;
    check_float_like(kOp, arg, t, grad_y);
    check_shape(kOp, arg, t, expected);
  };
  check_optional("grad_x", grad_x, x_shape);
  if (grad_weight.defined())
    MFUSER_CHECK(x.defined(), kOp, ": grad_weight is wanted, so x (saved from the forward) is needed");
  check_optional("grad_weight", grad_weight, weight.shape());
  check_optional("x", x, x_shape);
  check_optional("grad_bias", grad_bias, Shape{weight.dim(0)});
  check_same_device(kOp, {&grad_y, &weight, &x, &grad_x, &grad_weight, &grad_bias});
}

// grad_bias[j] = sum over rows of grad_y[r, j] in f64; each thread owns a range of columns and sweeps the rows,
// so the reads stay contiguous within its range and no partial sums need merging.
void column_sums(const Tensor& grad_y, Tensor& grad_bias) {
  const int64_t n = grad_bias.numel(), rows = n == 0 ? 0 : grad_y.numel() / n;
  const float* g = grad_y.data<float>();
  float* out = grad_bias.data<float>();
  parallel_for(n, 64, [&](int64_t begin, int64_t end) {
    std::vector<double> sum(size_t(end - begin), 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = begin; j < end; ++j) sum[j - begin] += g[r * n + j];
    for (int64_t j = begin; j < end; ++j) out[j] = float(sum[j - begin]);
  });
}

}  // namespace

void cpu::linear_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_y, Tensor& grad_x,
                          Tensor& grad_weight, Tensor& grad_bias) {
  check_linear_backward(x, weight, grad_y, grad_x, grad_weight, grad_bias);
  check_host(kOp, grad_y);
  const int64_t n = weight.dim(0), k = weight.dim(1), rows = n == 0 ? 0 : grad_y.numel() / n;
  // With rows (or n) == 0 the gemms below run with k == 0 and write zeros: the gradient of an empty sum.
  if (grad_x.defined()) cpu::gemm(grad_y, weight, grad_x, {.m = rows, .n = k, .k = n});
  if (grad_weight.defined()) cpu::gemm(grad_y, x, grad_weight, {.m = n, .n = k, .k = rows, .trans_a = true});
  if (grad_bias.defined()) column_sums(grad_y, grad_bias);
}

void linear_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_y, Tensor& grad_x,
                     Tensor& grad_weight, Tensor& grad_bias) {
  check_linear_backward(x, weight, grad_y, grad_x, grad_weight, grad_bias);
  if (grad_y.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::linear_backward(x, weight, grad_y, grad_x, grad_weight, grad_bias));
  cpu::linear_backward(x, weight, grad_y, grad_x, grad_weight, grad_bias);
}

}  // namespace mfuser::kernels
