// CPU reference of selective_scan, and the device dispatch.
#include "kernels/selective_scan/selective_scan.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

constexpr const char* kOp = "selective_scan";

void check_args(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                const Tensor& D, const Tensor& delta_bias, const Tensor& y, const Tensor* last_state,
                const char* y_name = "y") {
  check_float(kOp, "u", u);
  MFUSER_CHECK(u.ndim() == 3, kOp, ": u must be [batch, D, L], got ", u.str());
  const int64_t batch = u.dim(0), channels = u.dim(1), len = u.dim(2);
  check_float_like(kOp, "A", A, u);
  MFUSER_CHECK(A.ndim() == 2 && A.dim(0) == channels, kOp, ": A must be [D, N] with D = ", channels, ", got ",
               A.str());
  const int64_t state = A.dim(1);
  for (auto [name, t, shape] : {std::tuple{"delta", &delta, Shape{batch, channels, len}},
                                std::tuple{"B", &B, Shape{batch, state, len}},
                                std::tuple{"C", &C, Shape{batch, state, len}},
                                std::tuple{y_name, &y, Shape{batch, channels, len}}}) {
    check_float_like(kOp, name, *t, u);
    check_shape(kOp, name, *t, shape);
  }
  for (auto [name, t] : {std::pair{"D", &D}, std::pair{"delta_bias", &delta_bias}}) {
    if (!t->defined()) continue;
    check_float_like(kOp, name, *t, u);
    check_shape(kOp, name, *t, {channels});
  }
  if (last_state) {
    check_float_like(kOp, "last_state", *last_state, u);
    check_shape(kOp, "last_state", *last_state, {batch, channels, state});
  }
  check_same_device(kOp, {&u, &delta, &A, &B, &C, &D, &delta_bias, &y, last_state ? last_state : &u});
}

// F.softplus with beta 1 and threshold 20, as the CUDA kernel's log1pf(expf(x)).
float softplus(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }
// Its derivative as F.softplus's backward: 1 above the threshold, sigmoid below.
float softplus_grad(float x) { return x > 20.f ? 1.f : 1.f / (1.f + std::exp(-x)); }

// B or C [batch, N, L] time-major ([batch, L, N]): every channel of a batch entry reads them one step (N values)
// at a time.
std::vector<float> time_major(const Tensor& bc) {
  const int64_t batch = bc.dim(0), state = bc.dim(1), len = bc.dim(2);
  std::vector<float> out(size_t(batch * len * state));
  const float* in = bc.data<float>();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t n = 0; n < state; ++n)
      for (int64_t t = 0; t < len; ++t) out[size_t((b * len + t) * state + n)] = in[(b * state + n) * len + t];
  return out;
}

void check_backward_args(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                         const Tensor& D, const Tensor& delta_bias, const Tensor& grad_y, const Tensor& grad_u,
                         const Tensor& grad_delta, const Tensor& grad_A, const Tensor& grad_B, const Tensor& grad_C,
                         const Tensor& grad_D, const Tensor& grad_delta_bias) {
  check_args(u, delta, A, B, C, D, delta_bias, grad_y, nullptr, "grad_y");
  for (auto [name, t, like] : {std::tuple{"grad_u", &grad_u, &u}, std::tuple{"grad_delta", &grad_delta, &u},
                               std::tuple{"grad_A", &grad_A, &A}, std::tuple{"grad_B", &grad_B, &B},
                               std::tuple{"grad_C", &grad_C, &C}, std::tuple{"grad_D", &grad_D, &D},
                               std::tuple{"grad_delta_bias", &grad_delta_bias, &delta_bias}}) {
    MFUSER_CHECK(t->defined() == like->defined(), kOp, ": ", name, " must be defined exactly when its input is");
    if (!t->defined()) continue;
    check_float_like(kOp, name, *t, u);
    check_shape(kOp, name, *t, like->shape());
  }
  check_same_device(kOp, {&u, &grad_y, &grad_u, &grad_delta, &grad_A, &grad_B, &grad_C,
                          grad_D.defined() ? &grad_D : &u, grad_delta_bias.defined() ? &grad_delta_bias : &u});
}

}  // namespace

void cpu::selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                         const Tensor& D, const Tensor& delta_bias, Tensor& y, Tensor* last_state,
                         bool delta_softplus) {
  check_args(u, delta, A, B, C, D, delta_bias, y, last_state);
  check_host(kOp, u);
  const int64_t batch = u.dim(0), channels = u.dim(1), len = u.dim(2), state = A.dim(1);
  const std::vector<float> bt = time_major(B), ct = time_major(C);
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

void cpu::selective_scan_backward(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                  const Tensor& C, const Tensor& D, const Tensor& delta_bias, const Tensor& grad_y,
                                  Tensor& grad_u, Tensor& grad_delta, Tensor& grad_A, Tensor& grad_B, Tensor& grad_C,
                                  Tensor& grad_D, Tensor& grad_delta_bias, bool delta_softplus) {
  check_backward_args(u, delta, A, B, C, D, delta_bias, grad_y, grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D,
                      grad_delta_bias);
  check_host(kOp, u);
  const int64_t batch = u.dim(0), channels = u.dim(1), len = u.dim(2), state = A.dim(1);
  const size_t steps = size_t(len * state);
  const std::vector<float> bt = time_major(B), ct = time_major(C);
  const float* a_all = A.data<float>();
  const float* skip = D.defined() ? D.data<float>() : nullptr;
  const float* bias = delta_bias.defined() ? delta_bias.data<float>() : nullptr;
  const float *u_all = u.data<float>(), *delta_all = delta.data<float>(), *gy_all = grad_y.data<float>();
  float *gu_all = grad_u.data<float>(), *gdelta_all = grad_delta.data<float>();
  // grad_B and grad_C sum over channels: each task (a batch entry and a fixed group of its channels) sums into its
  // own [L, N] buffers, added up in task order afterwards, so no thread count changes a bit of the result. The
  // per-sequence sums over time (grad_A, grad_D, grad_delta_bias) are likewise kept per (b, d) and summed over b.
  const int64_t groups = std::min<int64_t>(channels, 16), tasks = batch * groups;
  std::vector<double> task_gb(size_t(tasks) * steps), task_gc(task_gb.size());
  std::vector<double> seq_ga(size_t(batch * channels * state)), seq_gd(size_t(batch * channels));
  std::vector<double> seq_gbias(seq_gd.size());
  parallel_for(tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> hs(steps), dts(static_cast<size_t>(len)), gh(static_cast<size_t>(state));
    std::vector<double> ga(static_cast<size_t>(state));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / groups, g = task % groups;
      double* gb = &task_gb[size_t(task) * steps];
      double* gc = &task_gc[size_t(task) * steps];
      for (int64_t d = g * channels / groups; d < (g + 1) * channels / groups; ++d) {
        const int64_t row = b * channels + d;
        const float* x = u_all + row * len;
        const float* raw = delta_all + row * len;
        const float* gy = gy_all + row * len;
        const float* a = a_all + d * state;
        const float dt_bias = bias ? bias[d] : 0.f;
        // The forward again, keeping every step's state (as the forward computes it, in f32).
        for (int64_t t = 0; t < len; ++t) {
          const float dt = delta_softplus ? softplus(raw[t] + dt_bias) : raw[t] + dt_bias;
          dts[size_t(t)] = dt;
          const float drive = dt * x[t];
          const float* bs = &bt[size_t((b * len + t) * state)];
          for (int64_t n = 0; n < state; ++n) {
            const float prev = t > 0 ? hs[size_t((t - 1) * state + n)] : 0.f;
            hs[size_t(t * state + n)] = std::exp(dt * a[n]) * prev + drive * bs[n];
          }
        }
        // Reverse sweep; gh is dL/dh_t (from y_t and, through the decay, from h_{t+1}).
        std::fill(gh.begin(), gh.end(), 0.f);
        std::fill(ga.begin(), ga.end(), 0.0);
        double gd = 0, gbias = 0;
        for (int64_t t = len - 1; t >= 0; --t) {
          const float dt = dts[size_t(t)], g_out = gy[t];
          const float* bs = &bt[size_t((b * len + t) * state)];
          const float* cs = &ct[size_t((b * len + t) * state)];
          const float* h = &hs[size_t(t * state)];
          double g_dt = 0, g_x = 0;
          for (int64_t n = 0; n < state; ++n) {
            const size_t tn = size_t(t * state + n);
            const float prev = t > 0 ? h[n - state] : 0.f, decay = std::exp(dt * a[n]);
            gc[tn] += double(g_out) * h[n];
            gh[size_t(n)] += g_out * cs[n];
            const double g_h = gh[size_t(n)];
            g_dt += g_h * (double(a[n]) * decay * prev + double(x[t]) * bs[n]);
            g_x += g_h * dt * bs[n];
            ga[size_t(n)] += g_h * dt * decay * prev;
            gb[tn] += g_h * dt * x[t];
            gh[size_t(n)] *= decay;
          }
          gu_all[row * len + t] = float(g_x + (skip ? double(skip[d]) * g_out : 0.0));
          gd += double(g_out) * x[t];
          const float g_delta = float(delta_softplus ? g_dt * softplus_grad(raw[t] + dt_bias) : g_dt);
          gdelta_all[row * len + t] = g_delta;
          gbias += g_delta;
        }
        std::copy(ga.begin(), ga.end(), &seq_ga[size_t(row * state)]);
        seq_gd[size_t(row)] = gd;
        seq_gbias[size_t(row)] = gbias;
      }
    }
  });
  float *gb_out = grad_B.data<float>(), *gc_out = grad_C.data<float>();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t n = 0; n < state; ++n)
      for (int64_t t = 0; t < len; ++t) {
        double sb = 0, sc = 0;
        for (int64_t g = 0; g < groups; ++g) {
          const size_t i = size_t(b * groups + g) * steps + size_t(t * state + n);
          sb += task_gb[i];
          sc += task_gc[i];
        }
        gb_out[(b * state + n) * len + t] = float(sb);
        gc_out[(b * state + n) * len + t] = float(sc);
      }
  // Sums over the batch of the per-sequence sums.
  const auto batch_sum = [&](const std::vector<double>& per_seq, int64_t width, float* out) {
    for (int64_t i = 0; i < channels * width; ++i) {
      double s = 0;
      for (int64_t b = 0; b < batch; ++b) s += per_seq[size_t(b * channels * width + i)];
      out[i] = float(s);
    }
  };
  batch_sum(seq_ga, state, grad_A.data<float>());
  if (skip) batch_sum(seq_gd, 1, grad_D.data<float>());
  if (bias) batch_sum(seq_gbias, 1, grad_delta_bias.data<float>());
}

void selective_scan_backward(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                             const Tensor& C, const Tensor& D, const Tensor& delta_bias, const Tensor& grad_y,
                             Tensor& grad_u, Tensor& grad_delta, Tensor& grad_A, Tensor& grad_B, Tensor& grad_C,
                             Tensor& grad_D, Tensor& grad_delta_bias, bool delta_softplus) {
  check_backward_args(u, delta, A, B, C, D, delta_bias, grad_y, grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D,
                      grad_delta_bias);
  if (u.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::selective_scan_backward(u, delta, A, B, C, D, delta_bias, grad_y, grad_u,
                                                            grad_delta, grad_A, grad_B, grad_C, grad_D,
                                                            grad_delta_bias, delta_softplus));
  cpu::selective_scan_backward(u, delta, A, B, C, D, delta_bias, grad_y, grad_u, grad_delta, grad_A, grad_B, grad_C,
                               grad_D, grad_delta_bias, delta_softplus);
}

void selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                    const Tensor& D, const Tensor& delta_bias, Tensor& y, Tensor* last_state, bool delta_softplus) {
  check_args(u, delta, A, B, C, D, delta_bias, y, last_state);
  if (u.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::selective_scan(u, delta, A, B, C, D, delta_bias, y, last_state, delta_softplus));
  cpu::selective_scan(u, delta, A, B, C, D, delta_bias, y, last_state, delta_softplus);
}

}  // namespace mfuser::kernels
