// CUDA msdeform_attn (forward): one thread per output element (b, q, h, c), c fastest, as mmcv's kernel. With
// MFuser's head_dim 32 a warp is one (b, q, h): its lanes read each corner pixel's 32 channels as one coalesced
// 128-byte row, and the sampling locations and weights they share are broadcast loads. Each thread walks the
// L x P samples in the reference's order and accumulates in f32.
//
// The level table lives on the device (the CPU reference checks it on the host; here that would need a copy and
// a sync), so the kernel itself never reads outside `value` whatever the table says: empty levels are skipped and
// every corner's pixel index is checked against S.
#include "kernels/common/cuda_common.cuh"
#include "kernels/msdeform_attn/msdeform_attn.h"

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

}  // namespace

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
