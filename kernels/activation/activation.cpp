// CPU reference of the activations, and the device dispatch.
#include "kernels/activation/activation.h"

#include <cmath>
#include <numbers>

#include "kernels/elementwise/elementwise.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

// exp of a non-positive argument only: no overflow, no 1 - (1 - tiny) cancellation for large |x|.
float sigmoid(float x) {
  if (x >= 0.f) return 1.f / (1.f + std::exp(-x));
  const float e = std::exp(x);
  return e / (1.f + e);
}

// 0.5 * (1 + erf(z)) loses all digits for z << 0; 0.5 * erfc(-z) is the same value without cancellation.
constexpr float kInvSqrt2 = float(1 / std::numbers::sqrt2);
float gelu(float x) { return 0.5f * x * std::erfc(-x * kInvSqrt2); }

// CLIP's constant.
constexpr float kQuickGeluScale = 1.702f;
// PyTorch's default threshold above which softplus returns x unchanged.
constexpr float kSoftplusThreshold = 20.f;

template <class Fn>
void map(const Tensor& x, Tensor& out, Fn fn) {
  const float* in = x.data<float>();
  float* po = out.data<float>();
  parallel_for(x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) po[i] = fn(in[i]);
  });
}

}  // namespace

std::string_view activation_name(Activation kind) {
  switch (kind) {
    case Activation::gelu: return "gelu";
    case Activation::quick_gelu: return "quick_gelu";
    case Activation::silu: return "silu";
    case Activation::relu: return "relu";
    case Activation::sigmoid: return "sigmoid";
    case Activation::softplus: return "softplus";
  }
  return "unknown";
}

void cpu::activation(const Tensor& x, Tensor& out, Activation kind) {
  detail::check_same_f32("activation", x, out);
  detail::check_host("activation", x);
  switch (kind) {
    case Activation::gelu: map(x, out, gelu); break;
    case Activation::quick_gelu: map(x, out, [](float v) { return v * sigmoid(kQuickGeluScale * v); }); break;
    case Activation::silu: map(x, out, [](float v) { return v * sigmoid(v); }); break;
    // `v < 0 ? 0 : v` rather than max(): NaN compares false and passes through, as in PyTorch.
    case Activation::relu: map(x, out, [](float v) { return v < 0.f ? 0.f : v; }); break;
    case Activation::sigmoid: map(x, out, sigmoid); break;
    case Activation::softplus:
      map(x, out, [](float v) { return v > kSoftplusThreshold ? v : std::log1p(std::exp(v)); });
      break;
  }
}

void activation(const Tensor& x, Tensor& out, Activation kind) {
  detail::check_same_f32("activation", x, out);
  MFUSER_CHECK(!x.device().is_cuda(), "activation: no CUDA kernel yet");
  cpu::activation(x, out, kind);
}

}  // namespace mfuser::kernels
