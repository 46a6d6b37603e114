// CPU reference of add / mul / scale, the shared broadcast indexing, and the device dispatch (CUDA:
// elementwise.cu).
#include "kernels/elementwise/elementwise.h"

#include <algorithm>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace detail {

void check_same_f32(const char* op, const Tensor& x, const Tensor& out) {
  MFUSER_CHECK(x.dtype() == DType::f32 && out.dtype() == DType::f32, op, ": ", x.str(), " -> ", out.str(),
               ": only f32 is supported");
  MFUSER_CHECK(x.shape() == out.shape(), op, ": ", x.str(), " -> ", out.str(), ": shapes differ");
  MFUSER_CHECK(x.device() == out.device(), op, ": ", x.str(), " -> ", out.str(), ": devices differ");
}

void check_same_float(const char* op, const Tensor& x, const Tensor& out) {
  check_float(op, "input", x);
  check_float_like(op, "output", out, x);
  MFUSER_CHECK(x.shape() == out.shape(), op, ": ", x.str(), " -> ", out.str(), ": shapes differ");
  MFUSER_CHECK(x.device() == out.device(), op, ": ", x.str(), " -> ", out.str(), ": devices differ");
}

void check_host(const char* op, const Tensor& t) {
  MFUSER_CHECK(t.device().is_cpu(), op, ": the CPU reference got a device tensor ", t.str());
}

BroadcastIndex::BroadcastIndex(const char* op, const Shape& target, const Shape& operand) {
  const int n = target.ndim(), lead = n - operand.ndim();
  MFUSER_CHECK(lead >= 0, op, ": cannot broadcast ", operand.str(), " onto ", target.str());
  int64_t strides[kMaxDims] = {};
  bool present[kMaxDims] = {};  // the operand has this dim (not size 1)
  int64_t contiguous = 1;
  for (int i = n - 1; i >= 0; --i) {
    const int64_t d = i >= lead ? operand[i - lead] : 1;
    MFUSER_CHECK(d == target[i] || d == 1, op, ": cannot broadcast ", operand.str(), " onto ", target.str());
    present[i] = d != 1;
    strides[i] = present[i] ? contiguous : 0;
    contiguous *= d;
  }
  // Grow the run from the back while the access pattern stays the same; size-1 target dims fit either one.
  int k = n;
  int pattern = -1;  // -1 undecided, 1 present, 0 broadcast
  while (k > 0) {
    const int i = k - 1;
    if (target[i] != 1) {
      const int p = present[i] ? 1 : 0;
      if (pattern == -1) pattern = p;
      if (p != pattern) break;
    }
    run_ *= target[i];
    --k;
  }
  run_stride_ = pattern == 0 ? 0 : 1;
  outer_ndim_ = k;
  for (int i = 0; i < k; ++i) {
    outer_dims_[i] = target[i];
    outer_strides_[i] = strides[i];
  }
}

int64_t BroadcastIndex::offset(int64_t i) const {
  int64_t row = i / run_;
  int64_t off = (i - row * run_) * run_stride_;
  for (int d = outer_ndim_ - 1; d >= 0; --d) {
    off += (row % outer_dims_[d]) * outer_strides_[d];
    row /= outer_dims_[d];
  }
  return off;
}

}  // namespace detail

namespace {

constexpr int64_t kGrain = 1 << 15;

void check_binary(const char* op, const Tensor& a, const Tensor& b, Tensor& out) {
  detail::check_same_float(op, a, out);
  check_float_like(op, "second operand", b, a);
  MFUSER_CHECK(b.device() == a.device(), op, ": ", a.str(), " and ", b.str(), ": devices differ");
  detail::BroadcastIndex(op, a.shape(), b.shape());  // throws when b does not broadcast onto a
}

template <class Op>
void binary_cpu(const char* op_name, const Tensor& a, const Tensor& b, Tensor& out, Op op) {
  check_binary(op_name, a, b, out);
  detail::check_host(op_name, a);
  const detail::BroadcastIndex index(op_name, a.shape(), b.shape());
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* po = out.data<float>();
  parallel_for(a.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t stop = std::min(end, (i / index.run() + 1) * index.run());
      const float* src = pb + index.offset(i);
      if (index.run_stride() == 1) {
        for (; i < stop; ++i, ++src) po[i] = op(pa[i], *src);
      } else {
        const float v = *src;
        for (; i < stop; ++i) po[i] = op(pa[i], v);
      }
    }
  });
}

}  // namespace

void cpu::add(const Tensor& a, const Tensor& b, Tensor& out) {
  binary_cpu("add", a, b, out, [](float x, float y) { return x + y; });
}

void cpu::mul(const Tensor& a, const Tensor& b, Tensor& out) {
  binary_cpu("mul", a, b, out, [](float x, float y) { return x * y; });
}

void cpu::scale(const Tensor& x, Tensor& out, float factor, float bias) {
  detail::check_same_f32("scale", x, out);
  detail::check_host("scale", x);
  const float* in = x.data<float>();
  float* po = out.data<float>();
  parallel_for(x.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) po[i] = in[i] * factor + bias;
  });
}

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  check_binary("add", a, b, out);
  if (a.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::add(a, b, out));
  cpu::add(a, b, out);
}

void mul(const Tensor& a, const Tensor& b, Tensor& out) {
  check_binary("mul", a, b, out);
  if (a.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::mul(a, b, out));
  cpu::mul(a, b, out);
}

void scale(const Tensor& x, Tensor& out, float factor, float bias) {
  detail::check_same_float("scale", x, out);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::scale(x, out, factor, bias));
  cpu::scale(x, out, factor, bias);
}

}  // namespace mfuser::kernels
