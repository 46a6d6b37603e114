// CPU reference of resize (bilinear and bicubic), and the device dispatch. Both modes are separable: each
// output pixel is a weighted sum over a few source rows and columns, so one resampler serves both, given
// per-axis taps.
#include "kernels/resize/resize.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

enum class Mode { bilinear, bicubic };

const char* op_name(Mode mode) { return mode == Mode::bilinear ? "resize_bilinear" : "resize_bicubic"; }

// `grads`: the backward's check (argument names grad_src, grad_dst).
void check_args(Mode mode, const Tensor& src, const Tensor& dst, double scale_h, double scale_w, bool grads = false) {
  const std::string name = str_cat(op_name(mode), grads ? "_backward" : "");
  const char* op = name.c_str();
  if (grads) {
    check_float(op, "grad_src", src);
    check_float_like(op, "grad_dst", dst, src);
  } else {
    check_float(op, "src", src);
    check_float_like(op, "dst", dst, src);
  }
  MFUSER_CHECK(src.ndim() == 4 && dst.ndim() == 4 && src.dim(0) == dst.dim(0) && src.dim(1) == dst.dim(1), op,
               ": src and dst must be [N, C, H, W] with the same N and C, got ", src.str(), " -> ", dst.str());
  MFUSER_CHECK(src.numel() > 0 && dst.numel() > 0, op, ": empty maps ", src.str(), " -> ", dst.str());
  // With a scale factor the output size is PyTorch's floor(in * scale).
  for (auto [axis, scale] : {std::pair{2, scale_h}, std::pair{3, scale_w}}) {
    MFUSER_CHECK(scale >= 0, op, ": negative scale ", scale);
    MFUSER_CHECK(scale == 0 || dst.dim(axis) == int64_t(std::floor(double(src.dim(axis)) * scale)), op,
                 ": scale ", scale, " maps ", src.dim(axis), " to ", int64_t(std::floor(double(src.dim(axis)) * scale)),
                 " pixels, but dst is ", dst.str());
  }
  check_same_device(op, {&src, &dst});
}

// For every output index along one axis: `taps` source indices (clamped into the map) and their weights.
struct AxisTaps {
  int taps = 0;
  std::vector<int64_t> index;  // [out * taps]
  std::vector<float> weight;   // [out * taps]
};

// Keys' cubic convolution kernel, A = -0.75 (PyTorch's and OpenCV's choice).
constexpr double kCubicA = -0.75;
double cubic_near(double x) { return ((kCubicA + 2) * x - (kCubicA + 3)) * x * x + 1; }                 // |x| <= 1
double cubic_far(double x) { return ((kCubicA * x - 5 * kCubicA) * x + 8 * kCubicA) * x - 4 * kCubicA; }  // 1 < |x| < 2

AxisTaps axis_taps(Mode mode, int64_t in, int64_t out, double scale) {
  const double step = scale > 0 ? 1.0 / scale : double(in) / double(out);
  AxisTaps a;
  a.taps = mode == Mode::bilinear ? 2 : 4;
  a.index.resize(size_t(out * a.taps));
  a.weight.resize(size_t(out * a.taps));
  for (int64_t i = 0; i < out; ++i) {
    double s = (double(i) + 0.5) * step - 0.5;
    int64_t* index = &a.index[size_t(i * a.taps)];
    float* weight = &a.weight[size_t(i * a.taps)];
    if (mode == Mode::bilinear) {
      s = std::max(s, 0.0);
      const int64_t lo = int64_t(s);  // s >= 0: truncation is floor
      const double frac = s - double(lo);
      index[0] = std::min(lo, in - 1);
      index[1] = std::min(lo + 1, in - 1);
      weight[0] = float(1 - frac);
      weight[1] = float(frac);
    } else {
      const double lo = std::floor(s), t = s - lo;
      const double w[4] = {cubic_far(t + 1), cubic_near(t), cubic_near(1 - t), cubic_far(2 - t)};
      for (int k = 0; k < 4; ++k) {
        index[k] = std::clamp(int64_t(lo) - 1 + k, int64_t(0), in - 1);
        weight[k] = float(w[k]);
      }
    }
  }
  return a;
}

void resample(Mode mode, const Tensor& src, Tensor& dst, double scale_h, double scale_w) {
  const int64_t planes = src.dim(0) * src.dim(1), in_h = src.dim(2), in_w = src.dim(3);
  const int64_t out_h = dst.dim(2), out_w = dst.dim(3);
  const AxisTaps rows = axis_taps(mode, in_h, out_h, scale_h), cols = axis_taps(mode, in_w, out_w, scale_w);
  const float* in = src.data<float>();
  float* out = dst.data<float>();
  parallel_for(planes * out_h, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> blended(static_cast<size_t>(in_w));  // the source rows of one output row, blended vertically
    for (int64_t r = begin; r < end; ++r) {
      const int64_t plane = r / out_h, y = r % out_h;
      const float* map = in + plane * in_h * in_w;
      std::fill(blended.begin(), blended.end(), 0.f);
      for (int k = 0; k < rows.taps; ++k) {
        const float w = rows.weight[size_t(y * rows.taps + k)];
        const float* row = map + rows.index[size_t(y * rows.taps + k)] * in_w;
        for (int64_t x = 0; x < in_w; ++x) blended[size_t(x)] += w * row[x];
      }
      float* o = out + r * out_w;
      for (int64_t x = 0; x < out_w; ++x) {
        float acc = 0;
        for (int k = 0; k < cols.taps; ++k)
          acc += cols.weight[size_t(x * cols.taps + k)] * blended[size_t(cols.index[size_t(x * cols.taps + k)])];
        o[x] = acc;
      }
    }
  });
}

// The adjoint of resample: every output gradient spread back over its taps, columns first, then rows.
void resample_backward(Mode mode, const Tensor& grad_dst, Tensor& grad_src, double scale_h, double scale_w) {
  const int64_t planes = grad_src.dim(0) * grad_src.dim(1), in_h = grad_src.dim(2), in_w = grad_src.dim(3);
  const int64_t out_h = grad_dst.dim(2), out_w = grad_dst.dim(3);
  const AxisTaps rows = axis_taps(mode, in_h, out_h, scale_h), cols = axis_taps(mode, in_w, out_w, scale_w);
  const float* g_all = grad_dst.data<float>();
  float* gs_all = grad_src.data<float>();
  parallel_for(planes, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(static_cast<size_t>(in_h * in_w)), row_grad(static_cast<size_t>(in_w));
    for (int64_t plane = begin; plane < end; ++plane) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t y = 0; y < out_h; ++y) {
        // This output row's gradient on the source columns (the blended row of the forward) ...
        const float* g = g_all + (plane * out_h + y) * out_w;
        std::fill(row_grad.begin(), row_grad.end(), 0.0);
        for (int64_t x = 0; x < out_w; ++x)
          for (int k = 0; k < cols.taps; ++k)
            row_grad[size_t(cols.index[size_t(x * cols.taps + k)])] +=
                double(cols.weight[size_t(x * cols.taps + k)]) * g[x];
        // ... then on the source rows that were blended into it.
        for (int k = 0; k < rows.taps; ++k) {
          const double w = rows.weight[size_t(y * rows.taps + k)];
          double* row = &acc[size_t(rows.index[size_t(y * rows.taps + k)] * in_w)];
          for (int64_t x = 0; x < in_w; ++x) row[x] += w * row_grad[size_t(x)];
        }
      }
      float* out = gs_all + plane * in_h * in_w;
      for (int64_t i = 0; i < in_h * in_w; ++i) out[i] = float(acc[size_t(i)]);
    }
  });
}

void run_cpu(Mode mode, const Tensor& src, Tensor& dst, double scale_h, double scale_w) {
  check_args(mode, src, dst, scale_h, scale_w);
  check_host(op_name(mode), src);
  resample(mode, src, dst, scale_h, scale_w);
}

void dispatch(Mode mode, const Tensor& src, Tensor& dst, double scale_h, double scale_w) {
  check_args(mode, src, dst, scale_h, scale_w);
  if (src.device().is_cuda()) {
    if (mode == Mode::bilinear) return MFUSER_CUDA_KERNEL(cuda::resize_bilinear(src, dst, scale_h, scale_w));
    return MFUSER_CUDA_KERNEL(cuda::resize_bicubic(src, dst, scale_h, scale_w));
  }
  run_cpu(mode, src, dst, scale_h, scale_w);
}

}  // namespace

void cpu::resize_bilinear_backward(const Tensor& grad_dst, Tensor& grad_src, double scale_h, double scale_w) {
  check_args(Mode::bilinear, grad_src, grad_dst, scale_h, scale_w, true);
  check_host("resize_bilinear_backward", grad_dst);
  resample_backward(Mode::bilinear, grad_dst, grad_src, scale_h, scale_w);
}

void resize_bilinear_backward(const Tensor& grad_dst, Tensor& grad_src, double scale_h, double scale_w) {
  check_args(Mode::bilinear, grad_src, grad_dst, scale_h, scale_w, true);
  if (grad_dst.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::resize_bilinear_backward(grad_dst, grad_src, scale_h, scale_w));
  cpu::resize_bilinear_backward(grad_dst, grad_src, scale_h, scale_w);
}

void cpu::resize_bilinear(const Tensor& src, Tensor& dst, double scale_h, double scale_w) {
  run_cpu(Mode::bilinear, src, dst, scale_h, scale_w);
}

void cpu::resize_bicubic(const Tensor& src, Tensor& dst, double scale_h, double scale_w) {
  run_cpu(Mode::bicubic, src, dst, scale_h, scale_w);
}

void resize_bilinear(const Tensor& src, Tensor& dst, double scale_h, double scale_w) {
  dispatch(Mode::bilinear, src, dst, scale_h, scale_w);
}

void resize_bicubic(const Tensor& src, Tensor& dst, double scale_h, double scale_w) {
  dispatch(Mode::bicubic, src, dst, scale_h, scale_w);
}

}  // namespace mfuser::kernels
