// CPU reference of msdeform_attn, and the device dispatch.
#include "kernels/msdeform_attn/msdeform_attn.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

constexpr const char* kOp = "msdeform_attn";

void check_args(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                const Tensor& sampling_locations, const Tensor& attention_weights, const Tensor& out,
                const char* out_name = "out") {
  check_float(kOp, "value", value);
  check_float_like(kOp, "sampling_locations", sampling_locations, value);
  check_float_like(kOp, "attention_weights", attention_weights, value);
  check_float_like(kOp, out_name, out, value);
  MFUSER_CHECK(value.ndim() == 4, kOp, ": value must be [batch, S, heads, head_dim], got ", value.str());
  MFUSER_CHECK(sampling_locations.ndim() == 6 && sampling_locations.dim(5) == 2, kOp,
               ": sampling_locations must be [batch, Q, heads, levels, points, 2], got ", sampling_locations.str());
  const int64_t batch = value.dim(0), heads = value.dim(2), head_dim = value.dim(3);
  const int64_t queries = sampling_locations.dim(1), levels = sampling_locations.dim(3);
  const int64_t points = sampling_locations.dim(4);
  check_shape(kOp, "sampling_locations", sampling_locations, {batch, queries, heads, levels, points, 2});
  check_shape(kOp, "attention_weights", attention_weights, {batch, queries, heads, levels, points});
  check_shape(kOp, out_name, out, {batch, queries, heads * head_dim});
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

void check_backward_args(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                         const Tensor& sampling_locations, const Tensor& attention_weights, const Tensor& grad_out,
                         const Tensor& grad_value, const Tensor& grad_locations, const Tensor& grad_weights) {
  check_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_out, "grad_out");
  for (auto [name, t, like] : {std::tuple{"grad_value", &grad_value, &value},
                               std::tuple{"grad_sampling_locations", &grad_locations, &sampling_locations},
                               std::tuple{"grad_attention_weights", &grad_weights, &attention_weights}}) {
    check_float_like(kOp, name, *t, value);
    check_shape(kOp, name, *t, like->shape());
  }
  check_same_device(kOp, {&value, &grad_out, &grad_value, &grad_locations, &grad_weights});
}

// The sizes and host data of one call, shared by the forward and backward references (after their checks).
struct HostProblem {
  int64_t batch, pixels, heads, head_dim, queries, levels, points;
  const int64_t *hw, *start;  // [L, 2] (h, w), [L]
  const float *v, *loc, *attn;
};

HostProblem host_problem(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                         const Tensor& sampling_locations, const Tensor& attention_weights) {
  return {value.dim(0),
          value.dim(1),
          value.dim(2),
          value.dim(3),
          sampling_locations.dim(1),
          sampling_locations.dim(3),
          sampling_locations.dim(4),
          spatial_shapes.data<int64_t>(),
          level_start_index.data<int64_t>(),
          value.data<float>(),
          sampling_locations.data<float>(),
          attention_weights.data<float>()};
}

}  // namespace

void cpu::msdeform_attn_backward(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                                 const Tensor& sampling_locations, const Tensor& attention_weights,
                                 const Tensor& grad_out, Tensor& grad_value, Tensor& grad_sampling_locations,
                                 Tensor& grad_attention_weights) {
  check_backward_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_out,
                      grad_value, grad_sampling_locations, grad_attention_weights);
  check_host(kOp, value);
  check_levels(value, spatial_shapes, level_start_index);
  const auto [batch, pixels, heads, head_dim, queries, levels, points, hw, start, v, loc, attn] =
      host_problem(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const float* go = grad_out.data<float>();
  float* gv = grad_value.data<float>();
  float* gloc = grad_sampling_locations.data<float>();
  float* gattn = grad_attention_weights.data<float>();
  // One task per (batch, head, level): it alone writes that level's value gradient for that head and the
  // gradients of the samples taken from it.
  parallel_for(batch * heads * levels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (heads * levels), h = task / levels % heads, l = task % levels;
      const int64_t map_h = hw[2 * l], map_w = hw[2 * l + 1];
      const int64_t first = ((b * pixels + start[l]) * heads + h) * head_dim;  // pixel (0, 0) of this map
      const float* map = v + first;
      float* gmap = gv + first;
      for (int64_t pixel = 0; pixel < map_h * map_w; ++pixel)
        std::fill_n(gmap + pixel * heads * head_dim, head_dim, 0.f);
      for (int64_t q = 0; q < queries; ++q) {
        const float* g = go + ((b * queries + q) * heads + h) * head_dim;
        for (int64_t p = 0; p < points; ++p) {
          const int64_t s = (((b * queries + q) * heads + h) * levels + l) * points + p;
          gloc[2 * s] = gloc[2 * s + 1] = gattn[s] = 0.f;
          // Exact in double for f32 loc and maps up to 2^29 pixels wide, as grid_sample's float64 unnormalization.
          const double x = double(loc[2 * s]) * double(map_w) - 0.5, y = double(loc[2 * s + 1]) * double(map_h) - 0.5;
          if (!(x >= -1 && y >= -1 && x < double(map_w) && y < double(map_h))) continue;  // no corner inside
          const double x0 = std::floor(x), y0 = std::floor(y), fx = x - x0, fy = y - y0;
          const int64_t j0 = int64_t(x0), i0 = int64_t(y0);
          const double corner_weight[4] = {(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx};
          const double d_fx[4] = {-(1 - fy), 1 - fy, -fy, fy}, d_fy[4] = {-(1 - fx), -fx, 1 - fx, fx};
          double g_weight = 0, g_x = 0, g_y = 0;
          for (int k = 0; k < 4; ++k) {
            const int64_t i = i0 + k / 2, j = j0 + k % 2;
            if (i < 0 || i >= map_h || j < 0 || j >= map_w) continue;  // zero padding: no gradient either way
            const int64_t offset = (i * map_w + j) * heads * head_dim;
            double dot = 0;  // <value at the corner, grad_out>
            for (int64_t c = 0; c < head_dim; ++c) dot += double(map[offset + c]) * g[c];
            g_weight += corner_weight[k] * dot;
            g_x += d_fx[k] * dot;
            g_y += d_fy[k] * dot;
            const float w = float(attn[s] * corner_weight[k]);
            for (int64_t c = 0; c < head_dim; ++c) gmap[offset + c] += w * g[c];
          }
          gattn[s] = float(g_weight);
          // x = loc_x * w - 0.5: d/dloc_x = w * d/dx
          gloc[2 * s] = float(attn[s] * g_x * double(map_w));
          gloc[2 * s + 1] = float(attn[s] * g_y * double(map_h));
        }
      }
    }
  });
}

void msdeform_attn_backward(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                            const Tensor& sampling_locations, const Tensor& attention_weights,
                            const Tensor& grad_out, Tensor& grad_value, Tensor& grad_sampling_locations,
                            Tensor& grad_attention_weights) {
  check_backward_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_out,
                      grad_value, grad_sampling_locations, grad_attention_weights);
  if (value.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::msdeform_attn_backward(value, spatial_shapes, level_start_index,
                                                           sampling_locations, attention_weights, grad_out,
                                                           grad_value, grad_sampling_locations,
                                                           grad_attention_weights));
  cpu::msdeform_attn_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                              grad_out, grad_value, grad_sampling_locations, grad_attention_weights);
}

void cpu::msdeform_attn(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                        const Tensor& sampling_locations, const Tensor& attention_weights, Tensor& out) {
  check_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, out);
  check_host(kOp, value);
  check_levels(value, spatial_shapes, level_start_index);
  const auto [batch, pixels, heads, head_dim, queries, levels, points, hw, start, v, loc, attn] =
      host_problem(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
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
  if (value.device().is_cuda())
    return MFUSER_CUDA_KERNEL(
        cuda::msdeform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, out));
  cpu::msdeform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, out);
}

}  // namespace mfuser::kernels
