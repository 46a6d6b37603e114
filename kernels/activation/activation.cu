// CUDA activations: one element-wise map per kind (elementwise_map.cuh), f32 arithmetic in the same
// cancellation-free forms as the CPU reference (gelu through erfc, sigmoid through exp of a non-positive
// argument), with the accurate expf / erfcf / log1pf (no fast-math intrinsics), so NaN and infinities give
// what PyTorch gives.
#include <cmath>

#include "kernels/activation/activation.h"
#include "kernels/elementwise/elementwise_map.cuh"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kQuickGeluScale = 1.702f;    // CLIP's constant
constexpr float kSoftplusThreshold = 20.f;   // PyTorch's default: softplus(x) = x above it

__device__ __forceinline__ float sigmoid(float x) {
  if (x >= 0.f) return 1.f / (1.f + expf(-x));
  const float e = expf(x);
  return e / (1.f + e);
}

template <Activation kind>
struct Apply {
  __device__ float operator()(float x) const {
    if constexpr (kind == Activation::gelu) {
      return 0.5f * x * erfcf(-x * kInvSqrt2);
    } else if constexpr (kind == Activation::quick_gelu) {
      return x * sigmoid(kQuickGeluScale * x);
    } else if constexpr (kind == Activation::silu) {
      return x * sigmoid(x);
    } else if constexpr (kind == Activation::relu) {
      return x < 0.f ? 0.f : x;  // NaN compares false and passes, as in PyTorch
    } else if constexpr (kind == Activation::sigmoid) {
      return sigmoid(x);
    } else if constexpr (kind == Activation::softplus) {
      return x > kSoftplusThreshold ? x : log1pf(expf(x));
    } else {
      static_assert(kind == Activation::exp);
      return expf(x);
    }
  }
};

template <class T, Activation kind>
void launch(const Tensor& x, Tensor& out) {
  launch_map(device_ptr<T>(x), device_ptr<T>(out), x.numel(), stream_of(x), Apply<kind>{});
}

}  // namespace

void cuda::activation(const Tensor& x, Tensor& out, Activation kind) {
  check_cuda_storage("activation", x.dtype(), {&x, &out});
  with_storage_type("activation", x.dtype(), [&]<class T>() {
    switch (kind) {
      case Activation::gelu: launch<T, Activation::gelu>(x, out); break;
      case Activation::quick_gelu: launch<T, Activation::quick_gelu>(x, out); break;
      case Activation::silu: launch<T, Activation::silu>(x, out); break;
      case Activation::relu: launch<T, Activation::relu>(x, out); break;
      case Activation::sigmoid: launch<T, Activation::sigmoid>(x, out); break;
      case Activation::softplus: launch<T, Activation::softplus>(x, out); break;
      case Activation::exp: launch<T, Activation::exp>(x, out); break;
    }
  });
}

}  // namespace mfuser::kernels
