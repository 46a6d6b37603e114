// CPU reference of the add / mul / scale gradients (sums over broadcast dims in f64), and the device dispatch.
#include <algorithm>
#include <vector>

#include "kernels/common/checks.h"
#include "kernels/elementwise/elementwise.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

// Throws unless grad_out is f32 (or bf16 on CUDA) and every defined gradient fits: grad_out's dtype, grad_a
// of grad_out's shape, grad_b broadcasting onto it.
void check_grads(const char* op, const Tensor& grad_out, const Tensor& grad_a, const Tensor& grad_b) {
  check_float(op, "grad_out", grad_out);
  if (grad_a.defined()) detail::check_same_float(op, grad_out, grad_a);
  if (grad_b.defined()) {
    check_float_like(op, "grad_b", grad_b, grad_out);
    MFUSER_CHECK(grad_b.device() == grad_out.device(), op, ": grad_b ", grad_b.str(), " must be on ",
                 grad_out.device().str());
    detail::BroadcastIndex(op, grad_out.shape(), grad_b.shape());  // throws when it does not broadcast
  }
}

void check_mul(const Tensor& a, const Tensor& b, const Tensor& grad_out, const Tensor& grad_a, const Tensor& grad_b) {
  check_grads("mul_backward", grad_out, grad_a, grad_b);
  MFUSER_CHECK(a.defined() && b.defined(), "mul_backward: both forward inputs a and b are needed");
  detail::check_same_float("mul_backward", a, grad_out);
  check_float_like("mul_backward", "b", b, a);
  MFUSER_CHECK(b.device() == a.device(), "mul_backward: b ", b.str(), " must be on ", a.device().str());
  detail::BroadcastIndex("mul_backward", a.shape(), b.shape());
  MFUSER_CHECK(!grad_b.defined() || grad_b.shape() == b.shape(), "mul_backward: grad_b ", grad_b.str(),
               " must have b's shape ", b.shape().str());
}

// grad_b[j] = sum of term(i) over the elements i of a `target`-shaped tensor onto which element j of grad_b
// broadcasts, in f64 and serially (no partial sums to merge). Runs of the broadcast index keep it cheap:
// one offset computation per run.
template <class Term>
void sum_onto(const char* op, const Shape& target, Tensor& grad_b, Term term) {
  const detail::BroadcastIndex index(op, target, grad_b.shape());
  std::vector<double> acc(size_t(grad_b.numel()), 0.0);
  const int64_t n = target.numel(), run = index.run();
  for (int64_t i = 0; i < n; i += run) {
    double* dst = acc.data() + index.offset(i);
    if (index.run_stride() == 1) {
      for (int64_t j = 0; j < run; ++j) dst[j] += term(i + j);
    } else {
      double s = 0;
      for (int64_t j = 0; j < run; ++j) s += term(i + j);
      *dst += s;
    }
  }
  std::transform(acc.begin(), acc.end(), grad_b.data<float>(), [](double v) { return float(v); });
}

void copy(const Tensor& src, Tensor& dst) {
  if (dst.raw_data() != src.raw_data()) dst.copy_from(src);
}

}  // namespace

void cpu::add_backward(const Tensor& grad_out, Tensor& grad_a, Tensor& grad_b) {
  check_grads("add_backward", grad_out, grad_a, grad_b);
  detail::check_host("add_backward", grad_out);
  if (grad_a.defined()) copy(grad_out, grad_a);
  if (!grad_b.defined()) return;
  if (grad_b.numel() == grad_out.numel()) {
    copy(grad_out, grad_b);  // b has a's full shape (maybe without its leading 1s): nothing to sum
    return;
  }
  const float* g = grad_out.data<float>();
  sum_onto("add_backward", grad_out.shape(), grad_b, [g](int64_t i) { return double(g[i]); });
}

void cpu::mul_backward(const Tensor& a, const Tensor& b, const Tensor& grad_out, Tensor& grad_a, Tensor& grad_b) {
  check_mul(a, b, grad_out, grad_a, grad_b);
  detail::check_host("mul_backward", grad_out);
  // grad_b first: grad_a may be grad_out itself, which grad_b still reads.
  if (grad_b.defined()) {
    if (grad_b.numel() == grad_out.numel()) {
      Tensor same_shape = grad_b.reshape(grad_out.shape());
      cpu::mul(grad_out, a, same_shape);
    } else {
      const float* g = grad_out.data<float>();
      const float* pa = a.data<float>();
      sum_onto("mul_backward", grad_out.shape(), grad_b, [g, pa](int64_t i) { return double(g[i]) * pa[i]; });
    }
  }
  if (grad_a.defined()) cpu::mul(grad_out, b, grad_a);
}

void cpu::scale_backward(const Tensor& grad_out, Tensor& grad_x, float factor) {
  detail::check_same_f32("scale_backward", grad_out, grad_x);
  cpu::scale(grad_out, grad_x, factor, 0.f);
}

void add_backward(const Tensor& grad_out, Tensor& grad_a, Tensor& grad_b) {
  check_grads("add_backward", grad_out, grad_a, grad_b);
  if (grad_out.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::add_backward(grad_out, grad_a, grad_b));
  cpu::add_backward(grad_out, grad_a, grad_b);
}

void mul_backward(const Tensor& a, const Tensor& b, const Tensor& grad_out, Tensor& grad_a, Tensor& grad_b) {
  check_mul(a, b, grad_out, grad_a, grad_b);
  if (grad_out.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::mul_backward(a, b, grad_out, grad_a, grad_b));
  cpu::mul_backward(a, b, grad_out, grad_a, grad_b);
}

void scale_backward(const Tensor& grad_out, Tensor& grad_x, float factor) {
  detail::check_same_float("scale_backward", grad_out, grad_x);
  if (grad_out.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::scale_backward(grad_out, grad_x, factor));
  cpu::scale_backward(grad_out, grad_x, factor);
}

}  // namespace mfuser::kernels
