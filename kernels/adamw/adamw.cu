// CUDA AdamW step: one grid-stride elementwise pass over param / exp_avg / exp_avg_sq (f32) and grad (f32 or
// bf16). Every operation uses an explicitly rounded intrinsic (__fmul_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn), so
// nvcc cannot contract them into FMAs and the result is the CPU reference's, bit for bit.
#include "kernels/adamw/adamw.h"
#include "kernels/common/cuda_common.cuh"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

template <class G>
__global__ void adamw_kernel(float* __restrict__ param, const G* __restrict__ grad, float* __restrict__ exp_avg,
                             float* __restrict__ exp_avg_sq, int64_t n, AdamWScalars s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = to_float(grad[i]);
    const float w = __fmul_rn(param[i], s.decay);
    const float m = __fadd_rn(__fmul_rn(exp_avg[i], s.beta1), __fmul_rn(g, s.one_minus_beta1));
    const float v = __fadd_rn(__fmul_rn(exp_avg_sq[i], s.beta2), __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bias_correction2_sqrt), s.eps);
    param[i] = __fadd_rn(w, __fdiv_rn(__fmul_rn(s.neg_step_size, m), denom));
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
  }
}

}  // namespace

void cuda::adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWScalars& s) {
  check_cuda_storage("adamw_step", DType::f32, {&param, &exp_avg, &exp_avg_sq});
  check_cuda_storage("adamw_step", grad.dtype(), {&grad});
  const int64_t n = param.numel();
  if (n == 0) return;
  constexpr int kThreads = 256;
  with_storage_type("adamw_step", grad.dtype(), [&]<class G>() {
    adamw_kernel<G><<<grid_for(n, kThreads), kThreads, 0, stream_of(param)>>>(
        param.data<float>(), static_cast<const G*>(grad.raw_data()), exp_avg.data<float>(),
        exp_avg_sq.data<float>(), n, s);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mfuser::kernels
