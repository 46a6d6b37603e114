// CPU reference of the activations, and the device dispatch (CUDA: activation.cu).
#include "kernels/activation/activation.h"

#include <cmath>
#include <numbers>

#include "kernels/common/checks.h"
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

// The backward in f64: the same cancellation-free sigmoid; derivatives are products of O(1) factors, so f64
// evaluation then one rounding to f32 is within an ulp of PyTorch's f64 autograd.
double sigmoid64(double x) {
  if (x >= 0.0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

// d/dx of x * sigmoid(a x): s + a x s (1 - s).
double x_sigmoid_derivative(double x, double a) {
  const double s = sigmoid64(a * x);
  return s + a * x * s * (1.0 - s);
}

double derivative(double x, Activation kind) {
  switch (kind) {
    case Activation::gelu: {
      constexpr double kInvSqrt2Pi = 0.5 * std::numbers::inv_sqrtpi * std::numbers::sqrt2;
      return 0.5 * std::erfc(-x / std::numbers::sqrt2) + x * kInvSqrt2Pi * std::exp(-0.5 * x * x);
    }
    case Activation::quick_gelu: return x_sigmoid_derivative(x, kQuickGeluScale);
    case Activation::silu: return x_sigmoid_derivative(x, 1.0);
    case Activation::relu: return 1.0;  // the x <= 0 case is handled by the caller (NaN must pass)
    case Activation::sigmoid: {
      const double s = sigmoid64(x);
      return s * (1.0 - s);
    }
    case Activation::softplus: return x > kSoftplusThreshold ? 1.0 : sigmoid64(x);
    case Activation::exp: return std::exp(x);
  }
  return 0.0;
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
    case Activation::exp: return "exp";
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
    case Activation::exp: map(x, out, [](float v) { return std::exp(v); }); break;
  }
}

void cpu::activation_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_in, Activation kind) {
  detail::check_same_f32("activation_backward", x, grad_in);
  detail::check_same_f32("activation_backward", grad_out, grad_in);
  detail::check_host("activation_backward", x);
  const float* px = x.data<float>();
  const float* pg = grad_out.data<float>();
  float* po = grad_in.data<float>();
  parallel_for(x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      // relu: PyTorch zeroes where the output is <= 0, so a NaN input passes the gradient through.
      if (kind == Activation::relu && px[i] <= 0.f)
        po[i] = 0.f;
      else
        po[i] = float(double(pg[i]) * derivative(px[i], kind));
    }
  });
}

void activation_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_in, Activation kind) {
  detail::check_same_float("activation_backward", x, grad_in);
  detail::check_same_float("activation_backward", grad_out, grad_in);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::activation_backward(x, grad_out, grad_in, kind));
  cpu::activation_backward(x, grad_out, grad_in, kind);
}

void activation(const Tensor& x, Tensor& out, Activation kind) {
  detail::check_same_float("activation", x, out);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::activation(x, out, kind));
  cpu::activation(x, out, kind);
}

}  // namespace mfuser::kernels
