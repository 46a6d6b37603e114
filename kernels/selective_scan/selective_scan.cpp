// CPU reference of selective_scan, and the device dispatch.
#include "kernels/selective_scan/selective_scan.h"

#include <cmath>
#include <tuple>
#include <vector>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

constexpr const char* kOp = "selective_scan";

void check_args(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                const Tensor& D, const Tensor& delta_bias, const Tensor& y, const Tensor* last_state) {
  check_f32(kOp, "u", u);
  MFUSER_CHECK(u.ndim() == 3, kOp, ": u must be [batch, D, L], got ", u.str());
  const int64_t batch = u.dim(0), channels = u.dim(1), len = u.dim(2);
  check_f32(kOp, "A", A);
  MFUSER_CHECK(A.ndim() == 2 && A.dim(0) == channels, kOp, ": A must be [D, N] with D = ", channels, ", got ",
               A.str());
  const int64_t state = A.dim(1);
  for (auto [name, t, shape] : {std::tuple{"delta", &delta, Shape{batch, channels, len}},
                                std::tuple{"B", &B, Shape{batch, state, len}},
                                std::tuple{"C", &C, Shape{batch, state, len}},
                                std::tuple{"y", &y, Shape{batch, channels, len}}}) {
    check_f32(kOp, name, *t);
    check_shape(kOp, name, *t, shape);
  }
  for (auto [name, t] : {std::pair{"D", &D}, std::pair{"delta_bias", &delta_bias}}) {
    if (!t->defined()) continue;
    check_f32(kOp, name, *t);
    check_shape(kOp, name, *t, {channels});
  }
  if (last_state) {
    check_f32(kOp, "last_state", *last_state);
    check_shape(kOp, "last_state", *last_state, {batch, channels, state});
  }
  check_same_device(kOp, {&u, &delta, &A, &B, &C, &D, &delta_bias, &y, last_state ? last_state : &u});
}

// F.softplus with beta 1 and threshold 20, as the CUDA kernel's log1pf(expf(x)).
float softplus(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }

}  // namespace

void cpu::selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                         const Tensor& D, const Tensor& delta_bias, Tensor& y, Tensor* last_state,
                         bool delta_softplus) {
  check_args(u, delta, A, B, C, D, delta_bias, y, last_state);
  check_host(kOp, u);
  const int64_t batch = u.dim(0), channels = u.dim(1), len = u.dim(2), state = A.dim(1);
  // B and C time-major ([batch, L, N]): every channel of a batch entry reads them, one step (N values) at a time.
  std::vector<float> bt(size_t(batch * len * state)), ct(bt.size());
  const float* b_in = B.data<float>();
  const float* c_in = C.data<float>();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t n = 0; n < state; ++n)
      for (int64_t t = 0; t < len; ++t) {
        bt[size_t((b * len + t) * state + n)] = b_in[(b * state + n) * len + t];
        ct[size_t((b * len + t) * state + n)] = c_in[(b * state + n) * len + t];
      }
  const float* a_all = A.data<float>();
  const float* skip = D.defined() ? D.data<float>() : nullptr;
  const float* bias = delta_bias.defined() ? delta_bias.data<float>() : nullptr;
  float* last = last_state ? last_state->data<float>() : nullptr;
  const float* u_all = u.data<float>();
  const float* delta_all = delta.data<float>();
  float* y_all = y.data<float>();
  parallel_for(batch * channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> h(static_cast<size_t>(state));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / channels, d = row % channels;
      const float* x = u_all + row * len;
      const float* dts = delta_all + row * len;
      const float* a = a_all + d * state;
      float* out = y_all + row * len;
      std::fill(h.begin(), h.end(), 0.f);
      for (int64_t t = 0; t < len; ++t) {
        float dt = dts[t] + (bias ? bias[d] : 0.f);
        if (delta_softplus) dt = softplus(dt);
        const float drive = dt * x[t];
        const float* bs = &bt[size_t((b * len + t) * state)];
        const float* cs = &ct[size_t((b * len + t) * state)];
        float acc = 0;
        for (int64_t n = 0; n < state; ++n) {
          h[size_t(n)] = std::exp(dt * a[n]) * h[size_t(n)] + drive * bs[n];
          acc += h[size_t(n)] * cs[n];
        }
        out[t] = acc + (skip ? skip[d] * x[t] : 0.f);
      }
      if (last) std::copy(h.begin(), h.end(), last + row * state);
    }
  });
}

void selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                    const Tensor& D, const Tensor& delta_bias, Tensor& y, Tensor* last_state, bool delta_softplus) {
  check_args(u, delta, A, B, C, D, delta_bias, y, last_state);
  if (u.device().is_cuda()) no_cuda_kernel_yet(kOp);
  cpu::selective_scan(u, delta, A, B, C, D, delta_bias, y, last_state, delta_softplus);
}

}  // namespace mfuser::kernels
