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

// The smallest geometry that holds N states: one lane per state up to 32 (N = 16, MFuser's d_state, gets
// 16 lanes x 1 register), then 32 lanes with 2, 4 or 8 registers each.
template <class T>
void launch_for_state(const ScanArgs<T>& args, int batch, cudaStream_t stream) {
  const int n = args.state;
  if (n <= 1) return launch<T, 1, 1>(args, batch, stream);
  if (n <= 2) return launch<T, 2, 1>(args, batch, stream);
  if (n <= 4) return launch<T, 4, 1>(args, batch, stream);
  if (n <= 8) return launch<T, 8, 1>(args, batch, stream);
  if (n <= 16) return launch<T, 16, 1>(args, batch, stream);
  if (n <= 32) return launch<T, 32, 1>(args, batch, stream);
  if (n <= 64) return launch<T, 32, 2>(args, batch, stream);
  if (n <= 128) return launch<T, 32, 4>(args, batch, stream);
  launch<T, 32, 8>(args, batch, stream);
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
    launch_for_state<T>(args, int(batch), stream_of(u));
  });
}

}  // namespace mfuser::kernels
