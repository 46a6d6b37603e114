// CUDA activations: one element-wise map per kind (elementwise_map.cuh), f32 arithmetic in the same
// cancellation-free forms as the CPU reference (gelu through erfc, sigmoid through exp of a non-positive
// argument), with the accurate expf / erfcf / log1pf (no fast-math intrinsics), so NaN and infinities give
// what PyTorch gives. The backward (grad_out * f'(x)) is one grid-stride kernel per kind, f32 arithmetic.
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

// f'(x) in f32 (the CPU reference evaluates it in f64: f32 is within a few ulp for these O(1) factors, with
// 1 - sigmoid(x) taken as sigmoid(-x)).
template <Activation kind>
__device__ __forceinline__ float derivative(float x) {
  if constexpr (kind == Activation::gelu) {
    constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
    return 0.5f * erfcf(-x * kInvSqrt2) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
  } else if constexpr (kind == Activation::quick_gelu || kind == Activation::silu) {
    constexpr float a = kind == Activation::silu ? 1.f : kQuickGeluScale;
    const float s = sigmoid(a * x);
    return s + a * x * s * sigmoid(-a * x);
  } else if constexpr (kind == Activation::relu) {
    return 1.f;  // x <= 0 is zeroed by the kernel (a NaN x passes grad_out, as in PyTorch)
  } else if constexpr (kind == Activation::sigmoid) {
    return sigmoid(x) * sigmoid(-x);  // 1 - s cancels to 0 in f32 from x ~ 17 on; sigmoid(-x) does not
  } else if constexpr (kind == Activation::softplus) {
    return x > kSoftplusThreshold ? 1.f : sigmoid(x);
  } else {
    static_assert(kind == Activation::exp);
    return expf(x);
  }
}

// grad_in = grad_out * f'(x); grad_in may be grad_out or x (each element is read, then written, by one thread).
template <class T, Activation kind>
__global__ void activation_backward_kernel(const T* x, const T* grad_out, T* grad_in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = to_float(x[i]);
    const float g = kind == Activation::relu && v <= 0.f ? 0.f : to_float(grad_out[i]) * derivative<kind>(v);
    grad_in[i] = from_float<T>(g);
  }
}

// Calls f.template operator()<kind>() with the compile-time constant for `kind`.
template <class F>
void with_kind(Activation kind, F&& f) {
  switch (kind) {
    case Activation::gelu: f.template operator()<Activation::gelu>(); break;
    case Activation::quick_gelu: f.template operator()<Activation::quick_gelu>(); break;
    case Activation::silu: f.template operator()<Activation::silu>(); break;
    case Activation::relu: f.template operator()<Activation::relu>(); break;
    case Activation::sigmoid: f.template operator()<Activation::sigmoid>(); break;
    case Activation::softplus: f.template operator()<Activation::softplus>(); break;
    case Activation::exp: f.template operator()<Activation::exp>(); break;
  }
}

}  // namespace

void cuda::activation(const Tensor& x, Tensor& out, Activation kind) {
  check_cuda_storage("activation", x.dtype(), {&x, &out});
  with_storage_type("activation", x.dtype(), [&]<class T>() {
    with_kind(kind, [&]<Activation k>() {
      launch_map(device_ptr<T>(x), device_ptr<T>(out), x.numel(), stream_of(x), Apply<k>{});
    });
  });
}

void cuda::activation_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_in, Activation kind) {
  check_cuda_storage("activation_backward", x.dtype(), {&x, &grad_out, &grad_in});
  const int64_t n = x.numel();
  if (n == 0) return;
  constexpr int kThreads = 256;
  with_storage_type("activation_backward", x.dtype(), [&]<class T>() {
    with_kind(kind, [&]<Activation k>() {
      activation_backward_kernel<T, k><<<grid_for(n, kThreads), kThreads, 0, stream_of(x)>>>(
          device_ptr<T>(x), device_ptr<T>(grad_out), device_ptr<T>(grad_in), n);
      MFUSER_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace mfuser::kernels
