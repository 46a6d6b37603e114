// CPU reference of l2norm, and the device dispatch.
#include "kernels/l2norm/l2norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/elementwise/elementwise.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& x, const Tensor& out, int dim, float eps) {
  detail::check_same_f32("l2norm", x, out);
  MFUSER_CHECK(dim >= -x.ndim() && dim < x.ndim(), "l2norm: dim ", dim, " out of range for ", x.str());
  MFUSER_CHECK(eps >= 0.f, "l2norm: eps ", eps, " must be non-negative");
}

}  // namespace

void cpu::l2norm(const Tensor& x, Tensor& out, int dim, float eps) {
  check_args(x, out, dim, eps);
  detail::check_host("l2norm", x);
  if (x.numel() == 0) return;
  // x as [outer, n, inner]: each of the outer * inner "columns" holds one vector with stride `inner`.
  const int d = dim < 0 ? dim + x.ndim() : dim;
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < d; ++i) outer *= x.dim(i);
  for (int i = d + 1; i < x.ndim(); ++i) inner *= x.dim(i);
  const int64_t n = x.dim(d);
  const float* px = x.data<float>();
  float* po = out.data<float>();
  parallel_for(outer * inner, std::max<int64_t>(1, (1 << 14) / n), [&](int64_t begin, int64_t end) {
    std::vector<double> divisor;
    // Neighbouring columns of one outer index are adjacent in memory: sweep them together.
    for (int64_t c = begin; c < end;) {
      const int64_t o = c / inner, i0 = c % inner, i1 = std::min(inner, i0 + (end - c));
      const float* in = px + o * n * inner;
      float* res = po + o * n * inner;
      divisor.assign(size_t(i1 - i0), 0.0);
      for (int64_t k = 0; k < n; ++k)
        for (int64_t i = i0; i < i1; ++i) divisor[i - i0] += double(in[k * inner + i]) * in[k * inner + i];
      for (double& v : divisor) v = std::max(std::sqrt(v), double(eps));
      for (int64_t k = 0; k < n; ++k)
        for (int64_t i = i0; i < i1; ++i) res[k * inner + i] = float(in[k * inner + i] / divisor[i - i0]);
      c += i1 - i0;
    }
  });
}

void l2norm(const Tensor& x, Tensor& out, int dim, float eps) {
  check_args(x, out, dim, eps);
  MFUSER_CHECK(!x.device().is_cuda(), "l2norm: no CUDA kernel yet");
  cpu::l2norm(x, out, dim, eps);
}

}  // namespace mfuser::kernels
