// CUDA msdeform_attn (forward): one thread per output element (b, q, h, c), c fastest, as mmcv's kernel. With
// MFuser's head_dim 32 a warp is one (b, q, h): its lanes read each corner pixel's 32 channels as one coalesced
// 128-byte row, and the sampling locations and weights they share are broadcast loads. Each thread walks the
// L x P samples in the reference's order and accumulates in f32.
//
// The level table lives on the device (the CPU reference checks it on the host; here that would need a copy and
// a sync), so the kernel itself never reads outside `value` whatever the table says: empty levels are skipped and
// every corner's pixel index is checked against S.
//
// Backward: one warp per sample (b, q, h, l, p), lanes over the head's channels. The dots <value corner,
// grad_out> are warp sums, so grad_sampling_locations and grad_attention_weights are per-sample gathers
// (deterministic). grad_value is a scatter: each lane atomically adds its channel's contribution into an f32
// buffer (grad_value itself for f32 storage, a scratch copy rounded to bf16 afterwards otherwise). Float
// atomics make grad_value's summation order, hence its last bits, vary run to run; that is the one
// non-deterministic result of the CUDA backward (see the header).
#include "kernels/common/cuda_common.cuh"
#include "kernels/msdeform_attn/msdeform_attn.h"

#include <type_traits>

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

template <class T>
struct DeformArgs {
  const T* value;                  // [Bt, S, H, Dh]
  const int64_t* spatial_shapes;   // [L, 2] (h, w)
  const int64_t* level_start;      // [L]
  const T* locations;              // [Bt, Q, H, L, P, 2]
  const T* weights;                // [Bt, Q, H, L, P]
  T* out;                          // [Bt, Q, H * Dh]
  int64_t pixels, queries, heads, head_dim, levels, points;
};

template <class T>
__global__ void msdeform_attn_kernel(const DeformArgs<T> p, int64_t count) {
  const int64_t pixel_stride = p.heads * p.head_dim;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bqh = i / p.head_dim;  // (b * Q + q) * H + h; i itself is out's flat index
    const int64_t b = bqh / p.heads / p.queries;
    const int64_t h = bqh % p.heads, c = i % p.head_dim;
    const T* channel = p.value + b * p.pixels * pixel_stride + h * p.head_dim + c;  // at pixel 0
    const int64_t sample0 = bqh * p.levels * p.points;
    float acc = 0.f;
    for (int64_t l = 0; l < p.levels; ++l) {
      const int64_t map_h = p.spatial_shapes[2 * l], map_w = p.spatial_shapes[2 * l + 1], start = p.level_start[l];
      if (map_h <= 0 || map_w <= 0) continue;
      for (int64_t pt = 0; pt < p.points; ++pt) {
        const int64_t s = sample0 + l * p.points + pt;
        // loc * n - 0.5 rounded twice, as the CPU reference forms it (no fused multiply-add).
        const float x = __fsub_rn(__fmul_rn(to_float(p.locations[2 * s]), float(map_w)), 0.5f);
        const float y = __fsub_rn(__fmul_rn(to_float(p.locations[2 * s + 1]), float(map_h)), 0.5f);
        // No corner inside the map (this also keeps huge or NaN coordinates away from the integer casts).
        if (!(x > -1.f && y > -1.f && x < float(map_w) && y < float(map_h))) continue;
        const float x0 = floorf(x), y0 = floorf(y), fx = x - x0, fy = y - y0;
        const int64_t j0 = int64_t(x0), i0 = int64_t(y0);
        const float weight = to_float(p.weights[s]);
        const float corner_weight[4] = {(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const int64_t row = i0 + k / 2, col = j0 + k % 2;
          if (row < 0 || row >= map_h || col < 0 || col >= map_w) continue;  // zero padding
          const int64_t pixel = start + row * map_w + col;
          if (pixel < 0 || pixel >= p.pixels) continue;  // a level table that does not fit value
          acc += weight * corner_weight[k] * to_float(channel[pixel * pixel_stride]);
        }
      }
    }
    p.out[i] = from_float<T>(acc);
  }
}

template <class T>
struct DeformGradArgs {
  const T* value;                  // [Bt, S, H, Dh]
  const int64_t* spatial_shapes;   // [L, 2] (h, w)
  const int64_t* level_start;      // [L]
  const T* locations;              // [Bt, Q, H, L, P, 2]
  const T* weights;                // [Bt, Q, H, L, P]
  const T* grad_out;               // [Bt, Q, H * Dh]
  float* grad_value;               // [Bt, S, H, Dh], zeroed, accumulated into atomically
  T* grad_locations;               // [Bt, Q, H, L, P, 2]
  T* grad_weights;                 // [Bt, Q, H, L, P]
  int64_t pixels, queries, heads, head_dim, levels, points;
};

// The CPU reference's formulas: pixel coordinates, corner weights and their slopes in double; the channel dots
// in f32 (a warp sum instead of the reference's double sum).
template <class T>
__global__ void msdeform_attn_backward_kernel(const DeformGradArgs<T> p, int64_t samples) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32), pixel_stride = p.heads * p.head_dim;
  for (int64_t s = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; s < samples; s += warps) {
    // s = (((b * Q + q) * H + h) * L + l) * P + pt; every lane of the warp has the same s (uniform branches).
    const int64_t bqh = s / (p.levels * p.points), l = s / p.points % p.levels;
    const int64_t b = bqh / p.heads / p.queries, h = bqh % p.heads;
    float g_weight = 0.f, g_loc_x = 0.f, g_loc_y = 0.f;
    const int64_t map_h = p.spatial_shapes[2 * l], map_w = p.spatial_shapes[2 * l + 1], start = p.level_start[l];
    const double x = double(to_float(p.locations[2 * s])) * double(map_w) - 0.5;
    const double y = double(to_float(p.locations[2 * s + 1])) * double(map_h) - 0.5;
    if (map_h > 0 && map_w > 0 && x >= -1 && y >= -1 && x < double(map_w) && y < double(map_h)) {
      const double x0 = floor(x), y0 = floor(y), fx = x - x0, fy = y - y0;
      const int64_t j0 = int64_t(x0), i0 = int64_t(y0);
      const double corner_weight[4] = {(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx};
      const double d_fx[4] = {-(1 - fy), 1 - fy, -fy, fy}, d_fy[4] = {-(1 - fx), -fx, 1 - fx, fx};
      const float attn = to_float(p.weights[s]);
      const T* g = p.grad_out + bqh * p.head_dim;
      double sum_weight = 0, sum_x = 0, sum_y = 0;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int64_t row = i0 + k / 2, col = j0 + k % 2;
        if (row < 0 || row >= map_h || col < 0 || col >= map_w) continue;  // zero padding: no gradient
        const int64_t pixel = start + row * map_w + col;
        if (pixel < 0 || pixel >= p.pixels) continue;  // a level table that does not fit value
        const int64_t offset = (b * p.pixels + pixel) * pixel_stride + h * p.head_dim;
        const float w = float(double(attn) * corner_weight[k]);
        float dot = 0.f;
        for (int64_t c = lane; c < p.head_dim; c += 32) {
          const float gc = to_float(g[c]);
          dot += to_float(p.value[offset + c]) * gc;
          atomicAdd(p.grad_value + offset + c, w * gc);
        }
        const double corner_dot = double(warp_sum(dot));
        sum_weight += corner_weight[k] * corner_dot;
        sum_x += d_fx[k] * corner_dot;
        sum_y += d_fy[k] * corner_dot;
      }
      g_weight = float(sum_weight);
      g_loc_x = float(double(attn) * sum_x * double(map_w));  // x = loc_x * w - 0.5: d/dloc_x = w * d/dx
      g_loc_y = float(double(attn) * sum_y * double(map_h));
    }
    if (lane == 0) {
      p.grad_weights[s] = from_float<T>(g_weight);
      p.grad_locations[2 * s] = from_float<T>(g_loc_x);
      p.grad_locations[2 * s + 1] = from_float<T>(g_loc_y);
    }
  }
}

template <class T>
__global__ void round_to_storage_kernel(const float* __restrict__ in, T* __restrict__ out, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_float<T>(in[i]);
}

}  // namespace

void cuda::msdeform_attn_backward(const Tensor& value, const Tensor& spatial_shapes,
                                  const Tensor& level_start_index, const Tensor& sampling_locations,
                                  const Tensor& attention_weights, const Tensor& grad_out, Tensor& grad_value,
                                  Tensor& grad_sampling_locations, Tensor& grad_attention_weights) {
  constexpr const char* op = "msdeform_attn_backward";
  check_cuda_storage(op, value.dtype(),
                     {&value, &sampling_locations, &attention_weights, &grad_out, &grad_value,
                      &grad_sampling_locations, &grad_attention_weights});
  MFUSER_CHECK(spatial_shapes.device().is_cuda() && level_start_index.device().is_cuda() &&
                   spatial_shapes.dtype() == DType::i64 && level_start_index.dtype() == DType::i64,
               op, ": the level tables must be i64 CUDA tensors, got ", spatial_shapes.str(), " and ",
               level_start_index.str());
  cudaStream_t stream = stream_of(value);
  const int64_t value_count = value.numel(), samples = attention_weights.numel();
  with_storage_type(op, value.dtype(), [&]<class T>() {
    // f32: accumulate straight into grad_value; bf16: into an f32 scratch, rounded once at the end.
    constexpr bool direct = std::is_same_v<T, float>;
    Tensor scratch = direct || value_count == 0 ? Tensor() : Tensor::empty(value.shape(), DType::f32, value.device());
    float* accumulator = direct ? static_cast<float*>(grad_value.raw_data()) : static_cast<float*>(scratch.raw_data());
    if (value_count > 0)
      MFUSER_CUDA_CHECK(cudaMemsetAsync(accumulator, 0, size_t(value_count) * sizeof(float), stream));
    constexpr int threads = 256;
    if (samples > 0) {
      const DeformGradArgs<T> args{static_cast<const T*>(value.raw_data()),
                                   static_cast<const int64_t*>(spatial_shapes.raw_data()),
                                   static_cast<const int64_t*>(level_start_index.raw_data()),
                                   static_cast<const T*>(sampling_locations.raw_data()),
                                   static_cast<const T*>(attention_weights.raw_data()),
                                   static_cast<const T*>(grad_out.raw_data()),
                                   accumulator,
                                   static_cast<T*>(grad_sampling_locations.raw_data()),
                                   static_cast<T*>(grad_attention_weights.raw_data()),
                                   value.dim(1),
                                   sampling_locations.dim(1),
                                   value.dim(2),
                                   value.dim(3),
                                   sampling_locations.dim(3),
                                   sampling_locations.dim(4)};
      msdeform_attn_backward_kernel<T><<<grid_for(samples * 32, threads), threads, 0, stream>>>(args, samples);
      MFUSER_CUDA_CHECK_LAUNCH();
    }
    if (!direct && value_count > 0) {
      round_to_storage_kernel<T><<<grid_for(value_count, threads), threads, 0, stream>>>(
          accumulator, static_cast<T*>(grad_value.raw_data()), value_count);
      MFUSER_CUDA_CHECK_LAUNCH();
    }
  });
}

void cuda::msdeform_attn(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                         const Tensor& sampling_locations, const Tensor& attention_weights, Tensor& out) {
  constexpr const char* op = "msdeform_attn";
  check_cuda_storage(op, value.dtype(), {&value, &sampling_locations, &attention_weights, &out});
  MFUSER_CHECK(spatial_shapes.device().is_cuda() && level_start_index.device().is_cuda() &&
                   spatial_shapes.dtype() == DType::i64 && level_start_index.dtype() == DType::i64,
               op, ": the level tables must be i64 CUDA tensors, got ", spatial_shapes.str(), " and ",
               level_start_index.str());
  const int64_t count = out.numel();
  if (count == 0) return;
  with_storage_type(op, value.dtype(), [&]<class T>() {
    const DeformArgs<T> args{static_cast<const T*>(value.raw_data()),
                             static_cast<const int64_t*>(spatial_shapes.raw_data()),
                             static_cast<const int64_t*>(level_start_index.raw_data()),
                             static_cast<const T*>(sampling_locations.raw_data()),
                             static_cast<const T*>(attention_weights.raw_data()),
                             static_cast<T*>(out.raw_data()),
                             value.dim(1),
                             sampling_locations.dim(1),
                             value.dim(2),
                             value.dim(3),
                             sampling_locations.dim(3),
                             sampling_locations.dim(4)};
    constexpr int threads = 256;
    msdeform_attn_kernel<T><<<grid_for(count, threads), threads, 0, stream_of(value)>>>(args, count);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mfuser::kernels
