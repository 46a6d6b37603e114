// CPU reference of point_sample (forward and backward), and the device dispatch.
#include "kernels/point_sample/point_sample.h"

#include <algorithm>
#include <cmath>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

constexpr const char* kOp = "point_sample";

// The four bilinear taps of one point on an h x w map: flat pixel index (-1 when outside: zero padding) and weight.
struct Taps {
  int64_t index[4];
  float weight[4];
};

Taps taps_at(const float* point, int64_t h, int64_t w) {
  Taps t{{-1, -1, -1, -1}, {0, 0, 0, 0}};
  // Exact in double for f32 points, as grid_sample's float64 unnormalization.
  const double x = double(point[0]) * double(w) - 0.5, y = double(point[1]) * double(h) - 0.5;
  // No corner inside the map (also keeps huge or NaN coordinates away from the integer casts).
  if (!(x > -1 && y > -1 && x < double(w) && y < double(h))) return t;
  const double x0 = std::floor(x), y0 = std::floor(y), fx = x - x0, fy = y - y0;
  const double weight[4] = {(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx};
  for (int k = 0; k < 4; ++k) {
    const int64_t i = int64_t(y0) + k / 2, j = int64_t(x0) + k % 2;
    if (i < 0 || i >= h || j < 0 || j >= w) continue;
    t.index[k] = i * w + j;
    t.weight[k] = float(weight[k]);
  }
  return t;
}

// map: input or grad_input [N, C, H, W]; sampled: out or grad_out [N, C, P].
void check_args(const Tensor& map, const Tensor& points, const Tensor& sampled, const char* map_name,
                const char* sampled_name) {
  check_float(kOp, map_name, map);
  check_float_like(kOp, "points", points, map);
  check_float_like(kOp, sampled_name, sampled, map);
  MFUSER_CHECK(map.ndim() == 4, kOp, ": ", map_name, " must be [N, C, H, W], got ", map.str());
  MFUSER_CHECK(points.ndim() == 3 && points.dim(2) == 2, kOp, ": points must be [N, P, 2], got ", points.str());
  check_shape(kOp, "points", points, {map.dim(0), points.dim(1), 2});
  check_shape(kOp, sampled_name, sampled, {map.dim(0), map.dim(1), points.dim(1)});
  check_same_device(kOp, {&map, &points, &sampled});
}

}  // namespace

void cpu::point_sample(const Tensor& input, const Tensor& points, Tensor& out) {
  check_args(input, points, out, "input", "out");
  check_host(kOp, input);
  const int64_t batch = input.dim(0), channels = input.dim(1), h = input.dim(2), w = input.dim(3);
  const int64_t count = points.dim(1);
  const float* in = input.data<float>();
  const float* pts = points.data<float>();
  float* o = out.data<float>();
  // One task per (n, point): the taps are shared by all channels.
  parallel_for(batch * count, 256, [&](int64_t begin, int64_t end) {
    for (int64_t np = begin; np < end; ++np) {
      const int64_t n = np / count, p = np % count;
      const Taps t = taps_at(pts + 2 * np, h, w);
      for (int64_t c = 0; c < channels; ++c) {
        const float* map = in + (n * channels + c) * h * w;
        float acc = 0;
        for (int k = 0; k < 4; ++k)
          if (t.index[k] >= 0) acc += t.weight[k] * map[t.index[k]];
        o[(n * channels + c) * count + p] = acc;
      }
    }
  });
}

void point_sample(const Tensor& input, const Tensor& points, Tensor& out) {
  check_args(input, points, out, "input", "out");
  if (input.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::point_sample(input, points, out));
  cpu::point_sample(input, points, out);
}

void cpu::point_sample_backward(const Tensor& points, const Tensor& grad_out, Tensor& grad_input) {
  check_args(grad_input, points, grad_out, "grad_input", "grad_out");
  check_host(kOp, grad_input);
  const int64_t batch = grad_input.dim(0), channels = grad_input.dim(1), h = grad_input.dim(2);
  const int64_t w = grad_input.dim(3), count = points.dim(1);
  const float* pts = points.data<float>();
  const float* go = grad_out.data<float>();
  float* gi = grad_input.data<float>();
  // One task per (n, c) plane: it alone writes that plane.
  parallel_for(batch * channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / channels;
      float* plane = gi + nc * h * w;
      std::fill_n(plane, h * w, 0.f);
      const float* g = go + nc * count;
      for (int64_t p = 0; p < count; ++p) {
        const Taps t = taps_at(pts + 2 * (n * count + p), h, w);
        for (int k = 0; k < 4; ++k)
          if (t.index[k] >= 0) plane[t.index[k]] += t.weight[k] * g[p];
      }
    }
  });
}

void point_sample_backward(const Tensor& points, const Tensor& grad_out, Tensor& grad_input) {
  check_args(grad_input, points, grad_out, "grad_input", "grad_out");
  if (grad_input.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::point_sample_backward(points, grad_out, grad_input));
  cpu::point_sample_backward(points, grad_out, grad_input);
}

}  // namespace mfuser::kernels
