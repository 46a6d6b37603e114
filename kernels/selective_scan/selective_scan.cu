// CUDA selective scan (forward). Sequences (b, d) are independent and each is a serial recurrence over time, so
// the parallelism is over (b, d) and over the N states: a group of kLanes threads owns one sequence, each lane
// holding kStates of its states in registers (state n in lane n % kLanes, register n / kLanes); y_t is the sum of
// the lanes' h * C, reduced with shuffles inside the group.
//
// A block holds `channels` sequences of one batch entry and walks time in chunks: per chunk it stages B and C
// (shared by all its channels), and per channel dt (delta + delta_bias, softplus applied once per element, not
// once per lane), dt * u and the skip term D * u, all coalesced along time; then it scans the chunk from shared
// memory and writes the chunk of y back coalesced. Shared rows are padded by one float so the lanes' column reads
// (one row each) hit distinct banks. State and all arithmetic are f32 whatever the storage type; exp is expf (not
// __expf) so fp32 results stay within 1e-4 of the CPU reference over thousands of steps.
#include <algorithm>

#include "kernels/common/cuda_common.cuh"
#include "kernels/selective_scan/selective_scan.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

constexpr int kMaxStates = 256;  // 32 lanes x 8 registers

template <class T>
struct ScanArgs {
  const T *u, *delta, *A, *B, *C;
  const T *D, *delta_bias;  // nullptr when absent
  T *y, *last_state;        // last_state: nullptr when not wanted
  int channels, state;
  int64_t len;
  bool delta_softplus;
};

// One instantiation's geometry. Channels per block: 128 threads, but at most 32 channels so the per-channel
// chunk buffers stay small when a group is only 1-2 lanes. Chunk: 64 steps, fewer for large N so B and C fit.
template <int kLanes, int kStates>
struct ScanShape {
  static_assert(kLanes >= 1 && kLanes <= 32 && (kLanes & (kLanes - 1)) == 0, "lanes: a power of two <= 32");
  static constexpr int rows = kLanes * kStates;  // states held per group (>= N; the extra rows are zero)
  static constexpr int channels = kLanes <= 4 ? 32 : 128 / kLanes;
  static constexpr int threads = channels * kLanes;  // a multiple of 32: whole warps for the shuffles
  static constexpr int chunk = rows <= 32 ? 64 : 2048 / rows;
  static constexpr int pitch = chunk + 1;
};

// F.softplus (beta 1, threshold 20), as the CPU reference.
__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }

template <class T, int kLanes, int kStates>
__global__ void __launch_bounds__(ScanShape<kLanes, kStates>::threads)
    selective_scan_kernel(const ScanArgs<T> p) {
  using S = ScanShape<kLanes, kStates>;
  __shared__ float b_chunk[S::rows * S::pitch], c_chunk[S::rows * S::pitch];
  __shared__ float dt_chunk[S::channels * S::pitch], drive_chunk[S::channels * S::pitch];
  __shared__ float y_chunk[S::channels * S::pitch];

  const int b = blockIdx.y, first_channel = blockIdx.x * S::channels;
  const int group = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int d = first_channel + group;
  // Groups past the last channel (and rows past N) run on zeros (dt = 0, A = 0, B = 0: h stays 0) without
  // leaving the loop: every lane of a warp must reach the shuffles.
  const bool active = d < p.channels;
  float a[kStates], h[kStates];
#pragma unroll
  for (int j = 0; j < kStates; ++j) {
    const int n = j * kLanes + lane;
    a[j] = active && n < p.state ? to_float(p.A[int64_t(d) * p.state + n]) : 0.f;
    h[j] = 0.f;
  }

  for (int64_t t0 = 0; t0 < p.len; t0 += S::chunk) {
    const int steps = int(p.len - t0 < S::chunk ? p.len - t0 : S::chunk);
    for (int i = threadIdx.x; i < S::rows * S::chunk; i += S::threads) {
      const int n = i / S::chunk, tt = i % S::chunk;
      const bool inside = n < p.state && tt < steps;
      const int64_t at = (int64_t(b) * p.state + n) * p.len + t0 + tt;
      b_chunk[n * S::pitch + tt] = inside ? to_float(p.B[at]) : 0.f;
      c_chunk[n * S::pitch + tt] = inside ? to_float(p.C[at]) : 0.f;
    }
    for (int i = threadIdx.x; i < S::channels * S::chunk; i += S::threads) {
      const int c = i / S::chunk, tt = i % S::chunk, channel = first_channel + c;
      float dt = 0.f, drive = 0.f, skip = 0.f;
      if (channel < p.channels && tt < steps) {
        const int64_t at = (int64_t(b) * p.channels + channel) * p.len + t0 + tt;
        const float x = to_float(p.u[at]);
        dt = to_float(p.delta[at]) + (p.delta_bias ? to_float(p.delta_bias[channel]) : 0.f);
        if (p.delta_softplus) dt = softplus(dt);
        drive = dt * x;
        skip = p.D ? to_float(p.D[channel]) * x : 0.f;
      }
      dt_chunk[c * S::pitch + tt] = dt;
      drive_chunk[c * S::pitch + tt] = drive;
      y_chunk[c * S::pitch + tt] = skip;
    }
    __syncthreads();

    // Unrolled so the steps' shuffle reductions (independent of each other; only h carries over) overlap.
#pragma unroll 4
    for (int tt = 0; tt < steps; ++tt) {
      const float dt = dt_chunk[group * S::pitch + tt], drive = drive_chunk[group * S::pitch + tt];
      float acc = 0.f;
#pragma unroll
      for (int j = 0; j < kStates; ++j) {
        const int row = (j * kLanes + lane) * S::pitch + tt;
        h[j] = expf(dt * a[j]) * h[j] + drive * b_chunk[row];
        acc += h[j] * c_chunk[row];
      }
#pragma unroll
      for (int offset = kLanes / 2; offset > 0; offset >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
      if (lane == 0) y_chunk[group * S::pitch + tt] += acc;
    }
    __syncthreads();

    for (int i = threadIdx.x; i < S::channels * S::chunk; i += S::threads) {
      const int c = i / S::chunk, tt = i % S::chunk, channel = first_channel + c;
      if (channel < p.channels && tt < steps)
        p.y[(int64_t(b) * p.channels + channel) * p.len + t0 + tt] = from_float<T>(y_chunk[c * S::pitch + tt]);
    }
    __syncthreads();  // the next chunk overwrites the buffers
  }

  if (p.last_state && active) {
#pragma unroll
    for (int j = 0; j < kStates; ++j) {
      const int n = j * kLanes + lane;
      if (n < p.state) p.last_state[(int64_t(b) * p.channels + d) * p.state + n] = from_float<T>(h[j]);
    }
  }
}

template <class T, int kLanes, int kStates>
void launch(const ScanArgs<T>& args, int batch, cudaStream_t stream) {
  using S = ScanShape<kLanes, kStates>;
  const dim3 grid(unsigned(ceil_div(args.channels, S::channels)), unsigned(batch));
  selective_scan_kernel<T, kLanes, kStates><<<grid, S::threads, 0, stream>>>(args);
  MFUSER_CUDA_CHECK_LAUNCH();
}

// Calls f.template operator()<kLanes, kStates>() with the smallest geometry that holds N states: one lane per
// state up to 32 (N = 16, MFuser's d_state, gets 16 lanes x 1 register), then 32 lanes with 2, 4 or 8 registers.
template <class F>
void with_geometry(int n, F&& f) {
  if (n <= 1) return f.template operator()<1, 1>();
  if (n <= 2) return f.template operator()<2, 1>();
  if (n <= 4) return f.template operator()<4, 1>();
  if (n <= 8) return f.template operator()<8, 1>();
  if (n <= 16) return f.template operator()<16, 1>();
  if (n <= 32) return f.template operator()<32, 1>();
  if (n <= 64) return f.template operator()<32, 2>();
  if (n <= 128) return f.template operator()<32, 4>();
  f.template operator()<32, 8>();
}

// ---- backward ---------------------------------------------------------------------------------------------
// Same geometry as the forward (a group of kLanes lanes per sequence, kStates states per lane in registers). One
// block = ScanShape::channels sequences of one batch entry:
//   1. forward over all L, saving the state at the start of every chunk of kChunk steps (f32 checkpoints in
//      scratch; each lane writes and later reads back only its own states);
//   2. chunks in reverse: the chunk's states are recomputed from its checkpoint into shared memory, then a
//      reverse sweep carries the adjoint gh = dL/dh_t in registers. grad_u / grad_delta are reduced over the
//      group's lanes with shuffles; the per-(b, d) sums over time of grad_A, grad_D, grad_delta_bias stay in
//      registers; grad_B / grad_C terms go to shared memory and are summed over the block's channels in channel
//      order into a per-(b, block) partial [N, L].
// Two small kernels then sum the partials (over channel blocks for grad_B / grad_C, over the batch for the
// per-channel gradients) in a fixed order: no atomics, bitwise reproducible, every sum in f32.
template <class T>
struct ScanBackwardArgs {
  ScanArgs<T> f;  // the forward's inputs (f.y and f.last_state unused)
  const T* grad_y;
  T *grad_u, *grad_delta;
  float* checkpoints;   // [Bt, D, chunks, N]
  float *part_b, *part_c;  // [Bt, channel blocks, N, L]
  float *seq_a, *seq_d, *seq_bias;  // [Bt, D, N], [Bt, D], [Bt, D] (seq_d / seq_bias null when not wanted)
};

// Steps per chunk of the backward: the three [channels, chunk, rows] shared buffers stay at 8 KB each.
template <int kLanes, int kStates>
constexpr int kBackwardChunk = 2048 / (ScanShape<kLanes, kStates>::rows * ScanShape<kLanes, kStates>::channels) > 1
                                   ? 2048 / (ScanShape<kLanes, kStates>::rows * ScanShape<kLanes, kStates>::channels)
                                   : 1;

template <class T, int kLanes, int kStates>
__global__ void __launch_bounds__(ScanShape<kLanes, kStates>::threads)
    selective_scan_backward_kernel(const ScanBackwardArgs<T> g) {
  using S = ScanShape<kLanes, kStates>;
  constexpr int kChunk = kBackwardChunk<kLanes, kStates>;
  constexpr int kBuffer = S::channels * kChunk * S::rows;
  __shared__ float h_chunk[kBuffer], gb_chunk[kBuffer], gc_chunk[kBuffer];  // [channel, step, state]
  const ScanArgs<T>& p = g.f;
  const int b = blockIdx.y, first_channel = blockIdx.x * S::channels;
  const int group = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int d = first_channel + group;
  // Groups past the last channel run on zeros (x = dt = grad_y = 0) through every shuffle, writing nothing.
  const bool active = d < p.channels;
  const int64_t row = int64_t(b) * p.channels + d;
  const int chunks = int(ceil_div<int64_t>(p.len, kChunk));
  const float dt_bias = active && p.delta_bias ? to_float(p.delta_bias[d]) : 0.f;
  const float skip = active && p.D ? to_float(p.D[d]) : 0.f;
  float a[kStates];
#pragma unroll
  for (int j = 0; j < kStates; ++j) {
    const int n = j * kLanes + lane;
    a[j] = active && n < p.state ? to_float(p.A[int64_t(d) * p.state + n]) : 0.f;
  }
  // Step t of this sequence: raw delta, dt (after bias and softplus) and x; zeros for inactive groups.
  const auto step_inputs = [&](int64_t t, float& raw, float& dt, float& x) {
    raw = active ? to_float(p.delta[row * p.len + t]) + dt_bias : 0.f;
    dt = p.delta_softplus && active ? softplus(raw) : raw;
    x = active ? to_float(p.u[row * p.len + t]) : 0.f;
  };
  // B or C at (state n, step t) of this batch entry; 0 past N.
  const auto bc_at = [&](const T* m, int n, int64_t t) {
    return n < p.state ? to_float(m[(int64_t(b) * p.state + n) * p.len + t]) : 0.f;
  };
  float* checkpoint = g.checkpoints + row * chunks * p.state;  // used only when active

  // 1. Forward, checkpointing the state before every chunk.
  {
    float h[kStates] = {};
    for (int c = 0; c < chunks; ++c) {
#pragma unroll
      for (int j = 0; j < kStates; ++j) {
        const int n = j * kLanes + lane;
        if (active && n < p.state) checkpoint[int64_t(c) * p.state + n] = h[j];
      }
      const int64_t t0 = int64_t(c) * kChunk;
      for (int64_t t = t0; t < p.len && t < t0 + kChunk; ++t) {
        float raw, dt, x;
        step_inputs(t, raw, dt, x);
#pragma unroll
        for (int j = 0; j < kStates; ++j) h[j] = expf(dt * a[j]) * h[j] + dt * x * bc_at(p.B, j * kLanes + lane, t);
      }
    }
  }

  // 2. Chunks in reverse.
  float gh[kStates] = {}, ga[kStates] = {};
  float gd = 0.f, gbias = 0.f;
  for (int c = chunks - 1; c >= 0; --c) {
    const int64_t t0 = int64_t(c) * kChunk;
    const int steps = int(p.len - t0 < kChunk ? p.len - t0 : kChunk);
    float h0[kStates];
#pragma unroll
    for (int j = 0; j < kStates; ++j) {
      const int n = j * kLanes + lane;
      h0[j] = active && n < p.state ? checkpoint[int64_t(c) * p.state + n] : 0.f;
    }
    {
      float h[kStates];
#pragma unroll
      for (int j = 0; j < kStates; ++j) h[j] = h0[j];
      for (int tt = 0; tt < steps; ++tt) {
        float raw, dt, x;
        step_inputs(t0 + tt, raw, dt, x);
#pragma unroll
        for (int j = 0; j < kStates; ++j) {
          const int n = j * kLanes + lane;
          h[j] = expf(dt * a[j]) * h[j] + dt * x * bc_at(p.B, n, t0 + tt);
          h_chunk[(group * kChunk + tt) * S::rows + n] = h[j];
        }
      }
    }
    for (int tt = steps - 1; tt >= 0; --tt) {
      const int64_t t = t0 + tt;
      float raw, dt, x;
      step_inputs(t, raw, dt, x);
      const float gy = active ? to_float(g.grad_y[row * p.len + t]) : 0.f;
      float g_dt = 0.f, g_x = 0.f;
#pragma unroll
      for (int j = 0; j < kStates; ++j) {
        const int n = j * kLanes + lane;
        const float h = h_chunk[(group * kChunk + tt) * S::rows + n];
        const float prev = tt > 0 ? h_chunk[(group * kChunk + tt - 1) * S::rows + n] : h0[j];
        const float decay = expf(dt * a[j]), bn = bc_at(p.B, n, t);
        gc_chunk[(group * kChunk + tt) * S::rows + n] = gy * h;
        gh[j] += gy * bc_at(p.C, n, t);
        g_dt += gh[j] * (a[j] * decay * prev + x * bn);
        g_x += gh[j] * dt * bn;
        ga[j] += gh[j] * dt * decay * prev;
        gb_chunk[(group * kChunk + tt) * S::rows + n] = gh[j] * dt * x;
        gh[j] *= decay;
      }
#pragma unroll
      for (int offset = kLanes / 2; offset > 0; offset >>= 1) {
        g_dt += __shfl_xor_sync(0xffffffffu, g_dt, offset);
        g_x += __shfl_xor_sync(0xffffffffu, g_x, offset);
      }
      if (active && lane == 0) {
        const float g_delta = p.delta_softplus && raw <= 20.f ? g_dt / (1.f + expf(-raw)) : g_dt;
        g.grad_u[row * p.len + t] = from_float<T>(g_x + skip * gy);
        g.grad_delta[row * p.len + t] = from_float<T>(g_delta);
        gd += gy * x;
        gbias += g_delta;
      }
    }
    __syncthreads();
    // This block's partial of grad_B / grad_C for the chunk: the sum over its channels, in channel order.
    float* part_b = g.part_b + (int64_t(b) * gridDim.x + blockIdx.x) * p.state * p.len;
    float* part_c = g.part_c + (int64_t(b) * gridDim.x + blockIdx.x) * p.state * p.len;
    for (int i = threadIdx.x; i < p.state * steps; i += S::threads) {
      const int n = i / steps, tt = i % steps;
      float sb = 0.f, sc = 0.f;
      for (int ch = 0; ch < S::channels; ++ch) {
        sb += gb_chunk[(ch * kChunk + tt) * S::rows + n];
        sc += gc_chunk[(ch * kChunk + tt) * S::rows + n];
      }
      part_b[int64_t(n) * p.len + t0 + tt] = sb;
      part_c[int64_t(n) * p.len + t0 + tt] = sc;
    }
    __syncthreads();  // the next chunk overwrites the buffers
  }

  if (!active) return;
#pragma unroll
  for (int j = 0; j < kStates; ++j) {
    const int n = j * kLanes + lane;
    if (n < p.state) g.seq_a[row * p.state + n] = ga[j];
  }
  if (lane == 0) {
    if (g.seq_d) g.seq_d[row] = gd;
    if (g.seq_bias) g.seq_bias[row] = gbias;
  }
}

// grad_B / grad_C [Bt, N, L]: the sum over channel blocks of the partials, in block order.
template <class T>
__global__ void sum_bc_partials_kernel(const float* part_b, const float* part_c, T* grad_b, T* grad_c, int blocks,
                                       int64_t per_batch, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / per_batch, e = i % per_batch;
    float sb = 0.f, sc = 0.f;
    for (int k = 0; k < blocks; ++k) {
      sb += part_b[(b * blocks + k) * per_batch + e];
      sc += part_c[(b * blocks + k) * per_batch + e];
    }
    grad_b[i] = from_float<T>(sb);
    grad_c[i] = from_float<T>(sc);
  }
}

// The per-channel gradients: sums over the batch of the per-sequence sums, in batch order. `per_seq` is
// [Bt, width] (width = D N for grad_A, D for grad_D / grad_delta_bias).
template <class T>
__global__ void sum_over_batch_kernel(const float* per_seq, T* out, int batch, int64_t width) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < width; i += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int b = 0; b < batch; ++b) s += per_seq[b * width + i];
    out[i] = from_float<T>(s);
  }
}

}  // namespace

void cuda::selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                          const Tensor& D, const Tensor& delta_bias, Tensor& y, Tensor* last_state,
                          bool delta_softplus) {
  constexpr const char* op = "selective_scan";
  Tensor none;
  check_cuda_storage(op, u.dtype(), {&u, &delta, &A, &B, &C, &D, &delta_bias, &y, last_state ? last_state : &none});
  const int64_t batch = u.dim(0), channels = u.dim(1), len = u.dim(2), state = A.dim(1);
  MFUSER_CHECK(state <= kMaxStates, op, ": the CUDA kernel holds at most ", kMaxStates, " states per channel, A is ",
               A.str());
  MFUSER_CHECK(batch <= 65535 && channels <= (int64_t(1) << 30), op, ": ", u.str(), " is too large for the grid");
  if (batch == 0 || channels == 0) return;
  with_storage_type(op, u.dtype(), [&]<class T>() {
    const auto in = [](const Tensor& t) { return t.defined() ? static_cast<const T*>(t.raw_data()) : nullptr; };
    const ScanArgs<T> args{in(u), in(delta), in(A), in(B), in(C), in(D), in(delta_bias),
                           static_cast<T*>(y.raw_data()),
                           last_state ? static_cast<T*>(last_state->raw_data()) : nullptr,
                           int(channels), int(state), len, delta_softplus};
    with_geometry(int(state),
                  [&]<int kLanes, int kStates>() { launch<T, kLanes, kStates>(args, int(batch), stream_of(u)); });
  });
}

void cuda::selective_scan_backward(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                   const Tensor& C, const Tensor& D, const Tensor& delta_bias, const Tensor& grad_y,
                                   Tensor& grad_u, Tensor& grad_delta, Tensor& grad_A, Tensor& grad_B, Tensor& grad_C,
                                   Tensor& grad_D, Tensor& grad_delta_bias, bool delta_softplus) {
  constexpr const char* op = "selective_scan_backward";
  check_cuda_storage(op, u.dtype(),
                     {&u, &delta, &A, &B, &C, &D, &delta_bias, &grad_y, &grad_u, &grad_delta, &grad_A, &grad_B,
                      &grad_C, &grad_D, &grad_delta_bias});
  const int64_t batch = u.dim(0), channels = u.dim(1), len = u.dim(2), state = A.dim(1);
  MFUSER_CHECK(state <= kMaxStates, op, ": the CUDA kernel holds at most ", kMaxStates, " states per channel, A is ",
               A.str());
  MFUSER_CHECK(batch <= 65535 && channels <= (int64_t(1) << 30), op, ": ", u.str(), " is too large for the grid");
  const Device device = u.device();
  cudaStream_t stream = stream_of(u);
  with_storage_type(op, u.dtype(), [&]<class T>() {
    with_geometry(int(state), [&]<int kLanes, int kStates>() {
      using S = ScanShape<kLanes, kStates>;
      const int64_t blocks = ceil_div<int64_t>(channels, S::channels);
      const int64_t chunks = ceil_div<int64_t>(len, kBackwardChunk<kLanes, kStates>);
      // Scratch (never empty, so every pointer is valid even for zero-sized inputs).
      const auto scratch = [&](int64_t n) { return Tensor::empty({std::max<int64_t>(n, 1)}, DType::f32, device); };
      Tensor checkpoints = scratch(batch * channels * chunks * state);
      Tensor part_b = scratch(batch * blocks * state * len), part_c = scratch(batch * blocks * state * len);
      Tensor seq_a = scratch(batch * channels * state), seq_d = scratch(batch * channels),
             seq_bias = scratch(batch * channels);
      const auto in = [](const Tensor& t) { return t.defined() ? static_cast<const T*>(t.raw_data()) : nullptr; };
      const auto out = [](Tensor& t) { return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr; };
      const ScanBackwardArgs<T> g{
          .f = {in(u), in(delta), in(A), in(B), in(C), in(D), in(delta_bias), nullptr, nullptr, int(channels),
                int(state), len, delta_softplus},
          .grad_y = in(grad_y), .grad_u = out(grad_u), .grad_delta = out(grad_delta),
          .checkpoints = checkpoints.data<float>(), .part_b = part_b.data<float>(), .part_c = part_c.data<float>(),
          .seq_a = seq_a.data<float>(), .seq_d = D.defined() ? seq_d.data<float>() : nullptr,
          .seq_bias = delta_bias.defined() ? seq_bias.data<float>() : nullptr};
      if (batch > 0 && channels > 0) {
        const dim3 grid{unsigned(blocks), unsigned(batch)};
        selective_scan_backward_kernel<T, kLanes, kStates><<<grid, S::threads, 0, stream>>>(g);
        MFUSER_CUDA_CHECK_LAUNCH();
      }
      constexpr int kThreads = 256;
      const int64_t bc_total = batch * state * len;
      if (bc_total > 0) {
        if (channels == 0) {  // no channel: grad_B and grad_C are sums of nothing
          MFUSER_CUDA_CHECK(cudaMemsetAsync(grad_B.raw_data(), 0, grad_B.nbytes(), stream));
          MFUSER_CUDA_CHECK(cudaMemsetAsync(grad_C.raw_data(), 0, grad_C.nbytes(), stream));
        } else {
          sum_bc_partials_kernel<T><<<grid_for(bc_total, kThreads), kThreads, 0, stream>>>(
              g.part_b, g.part_c, out(grad_B), out(grad_C), int(blocks), state * len, bc_total);
          MFUSER_CUDA_CHECK_LAUNCH();
        }
      }
      // Per-channel gradients (a batch of 0 sums nothing: zeros).
      const auto sum_over_batch = [&](const float* per_seq, Tensor& grad, int64_t width) {
        if (!grad.defined() || width == 0) return;
        sum_over_batch_kernel<T><<<grid_for(width, kThreads), kThreads, 0, stream>>>(per_seq, out(grad), int(batch),
                                                                                      width);
        MFUSER_CUDA_CHECK_LAUNCH();
      };
      sum_over_batch(g.seq_a, grad_A, channels * state);
      sum_over_batch(g.seq_d, grad_D, channels);
      sum_over_batch(g.seq_bias, grad_delta_bias, channels);
    });
  });
}

}  // namespace mfuser::kernels
