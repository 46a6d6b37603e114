// CPU reference of posenc, and the device dispatch.
#include "kernels/posenc/posenc.h"

#include <cmath>
#include <vector>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& out, double temperature, double eps) {
  check_float("posenc", "out", out);
  MFUSER_CHECK(out.ndim() == 4 && out.dim(1) % 4 == 0 && out.numel() > 0, "posenc: out must be [B, 2F, H, W] ",
               "with F = num_feats even and no empty dim, got ", out.str());
  MFUSER_CHECK(temperature > 0 && eps >= 0, "posenc: temperature must be > 0 and eps >= 0, got ", temperature,
               " and ", eps);
}

// The F channels of one axis at positions 1..n: value [k][p] (k-major, as the NCHW output is laid out).
std::vector<float> axis_features(int64_t feats, int64_t n, double temperature, double scale, double eps,
                                 double offset) {
  std::vector<float> f(size_t(feats * n));
  for (int64_t k = 0; k < feats; ++k) {
    const double period = std::pow(temperature, double(2 * (k / 2)) / double(feats));
    for (int64_t p = 0; p < n; ++p) {
      const double angle = (double(p + 1) + offset) / (double(n) + eps) * scale / period;
      f[size_t(k * n + p)] = float(k % 2 == 0 ? std::sin(angle) : std::cos(angle));
    }
  }
  return f;
}

}  // namespace

void cpu::posenc(Tensor& out, double temperature, double scale, double eps, double offset) {
  check_args(out, temperature, eps);
  check_host("posenc", out);
  const int64_t batch = out.dim(0), feats = out.dim(1) / 2, h = out.dim(2), w = out.dim(3);
  const std::vector<float> fy = axis_features(feats, h, temperature, scale, eps, offset);
  const std::vector<float> fx = axis_features(feats, w, temperature, scale, eps, offset);
  float* o = out.data<float>();
  // One task per output channel plane [H, W]: y planes vary along rows, x planes along columns.
  parallel_for(batch * 2 * feats, 64, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t c = plane % (2 * feats);
      float* dst = o + plane * h * w;
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < w; ++j)
          dst[i * w + j] = c < feats ? fy[size_t(c * h + i)] : fx[size_t((c - feats) * w + j)];
    }
  });
}

void posenc(Tensor& out, double temperature, double scale, double eps, double offset) {
  check_args(out, temperature, eps);
  if (out.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::posenc(out, temperature, scale, eps, offset));
  cpu::posenc(out, temperature, scale, eps, offset);
}

}  // namespace mfuser::kernels
