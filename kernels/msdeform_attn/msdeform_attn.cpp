// CPU reference of msdeform_attn, and the device dispatch.
#include "kernels/msdeform_attn/msdeform_attn.h"

#include <cmath>
#include <vector>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

constexpr const char* kOp = "msdeform_attn";

void check_args(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                const Tensor& sampling_locations, const Tensor& attention_weights, const Tensor& out) {
  check_f32(kOp, "value", value);
  check_f32(kOp, "sampling_locations", sampling_locations);
  check_f32(kOp, "attention_weights", attention_weights);
  check_f32(kOp, "out", out);
  MFUSER_CHECK(value.ndim() == 4, kOp, ": value must be [batch, S, heads, head_dim], got ", value.str());
  MFUSER_CHECK(sampling_locations.ndim() == 6 && sampling_locations.dim(5) == 2, kOp,
               ": sampling_locations must be [batch, Q, heads, levels, points, 2], got ", sampling_locations.str());
  const int64_t batch = value.dim(0), heads = value.dim(2), head_dim = value.dim(3);
  const int64_t queries = sampling_locations.dim(1), levels = sampling_locations.dim(3);
  const int64_t points = sampling_locations.dim(4);
  check_shape(kOp, "sampling_locations", sampling_locations, {batch, queries, heads, levels, points, 2});
  check_shape(kOp, "attention_weights", attention_weights, {batch, queries, heads, levels, points});
  check_shape(kOp, "out", out, {batch, queries, heads * head_dim});
  MFUSER_CHECK(spatial_shapes.dtype() == DType::i64 && spatial_shapes.shape() == Shape({levels, 2}), kOp,
               ": spatial_shapes must be i64 [", levels, ", 2], got ", spatial_shapes.str());
  MFUSER_CHECK(level_start_index.dtype() == DType::i64 && level_start_index.shape() == Shape({levels}), kOp,
               ": level_start_index must be i64 [", levels, "], got ", level_start_index.str());
  check_same_device(kOp, {&value, &spatial_shapes, &level_start_index, &sampling_locations, &attention_weights, &out});
}

// The level table must describe `value` exactly: a wrong table would read past the levels or the tensor.
void check_levels(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index) {
  const int64_t* hw = spatial_shapes.data<int64_t>();
  const int64_t* start = level_start_index.data<int64_t>();
  int64_t total = 0;
  for (int64_t l = 0; l < spatial_shapes.dim(0); ++l) {
    MFUSER_CHECK(hw[2 * l] > 0 && hw[2 * l + 1] > 0, kOp, ": level ", l, " has shape ", hw[2 * l], "x",
                 hw[2 * l + 1]);
    MFUSER_CHECK(start[l] == total, kOp, ": level_start_index[", l, "] is ", start[l], ", the levels before it hold ",
                 total, " pixels");
    total += hw[2 * l] * hw[2 * l + 1];
  }
  MFUSER_CHECK(total == value.dim(1), kOp, ": the levels hold ", total, " pixels, value ", value.str(), " has ",
               value.dim(1));
}

}  // namespace

void cpu::msdeform_attn(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                        const Tensor& sampling_locations, const Tensor& attention_weights, Tensor& out) {
  check_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, out);
  check_host(kOp, value);
  check_levels(value, spatial_shapes, level_start_index);
  const int64_t batch = value.dim(0), pixels = value.dim(1), heads = value.dim(2), head_dim = value.dim(3);
  const int64_t queries = sampling_locations.dim(1), levels = sampling_locations.dim(3);
  const int64_t points = sampling_locations.dim(4);
  const int64_t* hw = spatial_shapes.data<int64_t>();
  const int64_t* start = level_start_index.data<int64_t>();
  const float* v = value.data<float>();
  const float* loc = sampling_locations.data<float>();
  const float* attn = attention_weights.data<float>();
  float* o = out.data<float>();
  parallel_for(batch * queries, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bq = begin; bq < end; ++bq) {
      const int64_t b = bq / queries;
      for (int64_t h = 0; h < heads; ++h) {
        float* acc = o + (bq * heads + h) * head_dim;
        std::fill(acc, acc + head_dim, 0.f);
        const int64_t sample0 = (bq * heads + h) * levels * points;  // index of (b, q, h, 0, 0)
        for (int64_t l = 0; l < levels; ++l) {
          const int64_t map_h = hw[2 * l], map_w = hw[2 * l + 1];
          // pixel (i, j) of this level, head h: value[b, start + i * w + j, h, :]
          const float* map = v + ((b * pixels + start[l]) * heads + h) * head_dim;
          for (int64_t p = 0; p < points; ++p) {
            const int64_t s = sample0 + l * points + p;
            const float x = loc[2 * s] * float(map_w) - 0.5f, y = loc[2 * s + 1] * float(map_h) - 0.5f;
            // No corner inside the map (this also keeps huge or NaN coordinates away from the integer casts).
            if (!(x > -1 && y > -1 && x < float(map_w) && y < float(map_h))) continue;
            const float x0 = std::floor(x), y0 = std::floor(y);
            const float fx = x - x0, fy = y - y0;
            const int64_t j0 = int64_t(x0), i0 = int64_t(y0);
            const float corner_weight[4] = {(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx};
            for (int k = 0; k < 4; ++k) {
              const int64_t i = i0 + k / 2, j = j0 + k % 2;
              if (i < 0 || i >= map_h || j < 0 || j >= map_w) continue;  // zero padding
              const float w = attn[s] * corner_weight[k];
              const float* pixel = map + (i * map_w + j) * heads * head_dim;
              for (int64_t c = 0; c < head_dim; ++c) acc[c] += w * pixel[c];
            }
          }
        }
      }
    }
  });
}

void msdeform_attn(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                   const Tensor& sampling_locations, const Tensor& attention_weights, Tensor& out) {
  check_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, out);
  if (value.device().is_cuda()) no_cuda_kernel_yet(kOp);
  cpu::msdeform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, out);
}

}  // namespace mfuser::kernels
