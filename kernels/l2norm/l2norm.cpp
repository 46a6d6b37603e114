// CPU reference of l2norm, and the device dispatch.
#include "kernels/l2norm/l2norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const char* op, const Tensor& x, const Tensor& out, int dim, float eps) {
  check_float(op, "x", x);
  check_float_like(op, "out", out, x);
  check_shape(op, "out", out, x.shape());
  check_same_device(op, {&x, &out});
  MFUSER_CHECK(dim >= -x.ndim() && dim < x.ndim(), op, ": dim ", dim, " out of range for ", x.str());
  MFUSER_CHECK(eps >= 0.f, op, ": eps ", eps, " must be non-negative");
}

// The backward: x, grad_out and grad_in of one shape and dtype.
void check_backward_args(const Tensor& x, const Tensor& grad_out, const Tensor& grad_in, int dim, float eps) {
  constexpr const char* op = "l2norm_backward";
  check_args(op, x, grad_in, dim, eps);
  check_float_like(op, "grad_out", grad_out, x);
  check_shape(op, "grad_out", grad_out, x.shape());
  check_same_device(op, {&x, &grad_out});
}

// Calls body(base, i0, i1, n, inner) for blocks of the vectors of x along `dim`: x viewed as [outer, n, inner],
// element k of vector i (i0 <= i < i1) of the block is at base + k * inner + i. Neighbouring vectors of one
// outer index are adjacent in memory, so a block sweeps them together.
template <class Body>
void for_vector_blocks(const Tensor& x, int dim, const Body& body) {
  if (x.numel() == 0) return;
  const int d = dim < 0 ? dim + x.ndim() : dim;
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < d; ++i) outer *= x.dim(i);
  for (int i = d + 1; i < x.ndim(); ++i) inner *= x.dim(i);
  const int64_t n = x.dim(d);
  parallel_for(outer * inner, std::max<int64_t>(1, (1 << 14) / n), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end;) {
      const int64_t o = c / inner, i0 = c % inner, i1 = std::min(inner, i0 + (end - c));
      body(o * n * inner, i0, i1, n, inner);
      c += i1 - i0;
    }
  });
}

}  // namespace

void cpu::l2norm(const Tensor& x, Tensor& out, int dim, float eps) {
  check_args("l2norm", x, out, dim, eps);
  check_host("l2norm", x);
  const float* px = x.data<float>();
  float* po = out.data<float>();
  for_vector_blocks(x, dim, [&](int64_t base, int64_t i0, int64_t i1, int64_t n, int64_t inner) {
    const float* in = px + base;
    float* res = po + base;
    std::vector<double> divisor(size_t(i1 - i0), 0.0);
    for (int64_t k = 0; k < n; ++k)
      for (int64_t i = i0; i < i1; ++i) divisor[i - i0] += double(in[k * inner + i]) * in[k * inner + i];
    for (double& v : divisor) v = std::max(std::sqrt(v), double(eps));
    for (int64_t k = 0; k < n; ++k)
      for (int64_t i = i0; i < i1; ++i) res[k * inner + i] = float(in[k * inner + i] / divisor[i - i0]);
  });
}

void cpu::l2norm_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_in, int dim, float eps) {
  check_backward_args(x, grad_out, grad_in, dim, eps);
  check_host("l2norm_backward", x);
  const float* px = x.data<float>();
  const float* pg = grad_out.data<float>();
  float* po = grad_in.data<float>();
  for_vector_blocks(x, dim, [&](int64_t base, int64_t i0, int64_t i1, int64_t n, int64_t inner) {
    const float *in = px + base, *g = pg + base;
    float* res = po + base;
    // Per vector: 1 / d and the coefficient c of x in grad_in = grad_out / d - c x.
    std::vector<double> sq(size_t(i1 - i0), 0.0), dot(sq.size(), 0.0);
    for (int64_t k = 0; k < n; ++k)
      for (int64_t i = i0; i < i1; ++i) {
        const double v = in[k * inner + i];
        sq[i - i0] += v * v;
        dot[i - i0] += v * g[k * inner + i];
      }
    for (size_t j = 0; j < sq.size(); ++j) {
      const double norm = std::sqrt(sq[j]);
      // Below eps the divisor is the constant eps: no gradient flows through the norm.
      const bool through_norm = norm >= double(eps);
      const double d = through_norm ? norm : double(eps);
      sq[j] = 1.0 / d;
      dot[j] = through_norm ? dot[j] / (d * d * d) : 0.0;
    }
    for (int64_t k = 0; k < n; ++k)
      for (int64_t i = i0; i < i1; ++i)
        res[k * inner + i] = float(g[k * inner + i] * sq[i - i0] - dot[i - i0] * in[k * inner + i]);
  });
}

void l2norm_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_in, int dim, float eps) {
  check_backward_args(x, grad_out, grad_in, dim, eps);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::l2norm_backward(x, grad_out, grad_in, dim, eps));
  cpu::l2norm_backward(x, grad_out, grad_in, dim, eps);
}

void l2norm(const Tensor& x, Tensor& out, int dim, float eps) {
  check_args("l2norm", x, out, dim, eps);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::l2norm(x, out, dim, eps));
  cpu::l2norm(x, out, dim, eps);
}

}  // namespace mfuser::kernels
