// CUDA BCE-with-logits mean and naive dice loss (forward and backward), f32, deterministic f64 sums
// (kernels/common/double_sums.cuh). BCE: one thread per element, per-block partials, one final block. Dice: one
// block per row for the row sums (A, S, T), then one block adds the rows' terms in row order; the backward
// recomputes a row's sums in its block and writes the row's gradients. Nothing is read back to the host.
#include <algorithm>

#include "kernels/bce_dice/bce_dice.h"
#include "kernels/common/double_sums.cuh"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

// The rows that exist: all `rows` of x, or the first *count (mask_loss's positives, counted on the device).
struct ActiveRows {
  const int32_t* count;
  int64_t rows;
  __device__ int64_t get() const { return count ? int64_t(*count) : rows; }
};

// sigmoid(v) and 1 - sigmoid(v) = sigmoid(-v), each computed directly (no 1 - s cancellation).
__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }
__device__ __forceinline__ float one_minus_sigmoid(float v) { return 1.f / (1.f + expf(v)); }

__global__ void bce_partials_kernel(const float* __restrict__ x, const float* __restrict__ t, int64_t points,
                                    ActiveRows active, double* __restrict__ partial) {
  __shared__ double scratch[32];
  const int64_t count = active.get() * points;
  double sum[1] = {0.0};
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    sum[0] += double(fmaxf(v, 0.f) - v * t[i] + log1pf(expf(-fabsf(v))));
  }
  store_block_partials(sum, partial, scratch);
}

__global__ void bce_finish_kernel(const double* __restrict__ partial, int64_t blocks, int64_t points, ActiveRows active,
                                  float* __restrict__ loss) {
  __shared__ double scratch[32];
  double total[1];
  sum_block_partials(partial, blocks, total, scratch);
  if (threadIdx.x == 0) *loss = float(total[0] / (double(active.get()) * double(points)));
}

__global__ void bce_backward_kernel(const float* __restrict__ x, const float* __restrict__ t,
                                    const float* __restrict__ grad_loss, int64_t points, ActiveRows active,
                                    float* __restrict__ grad) {
  const int64_t rows = active.get(), count = rows * points, total = active.rows * points;
  const float scale = float(double(*grad_loss) / (double(rows) * double(points)));
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    if (i >= count) {
      grad[i] = 0.f;
      continue;
    }
    const float v = x[i], target = t[i];
    grad[i] = scale * (sigmoid(v) * (1.f - target) - one_minus_sigmoid(v) * target);
  }
}

// A dice row's sums over its points: A = sum s t, S = sum s, T = sum t (every thread of the block gets them).
struct DiceSums {
  double a, s, t;
};

__device__ DiceSums dice_row_sums(const float* x, const float* t, int64_t points, double* scratch) {
  double a = 0.0, s = 0.0, tt = 0.0;
  for (int64_t p = threadIdx.x; p < points; p += blockDim.x) {
    const double sv = sigmoid(x[p]), tv = t[p];
    a += sv * tv;
    s += sv;
    tt += tv;
  }
  const double total_a = block_sum(a, scratch), total_s = block_sum(s, scratch);
  return {total_a, total_s, block_sum(tt, scratch)};
}

// terms[n] = 1 - (2 A_n + eps) / (S_n + T_n + eps) for the active rows; one block per row (grid-stride).
__global__ void dice_rows_kernel(const float* __restrict__ x, const float* __restrict__ t, int64_t points, float eps,
                                 ActiveRows active, double* __restrict__ terms) {
  __shared__ double scratch[32];
  const int64_t rows = active.get();
  for (int64_t n = blockIdx.x; n < rows; n += gridDim.x) {  // uniform per block: block_sum is safe inside
    const DiceSums d = dice_row_sums(x + n * points, t + n * points, points, scratch);
    if (threadIdx.x == 0) terms[n] = 1.0 - (2 * d.a + eps) / (d.s + d.t + eps);
  }
}

__global__ void dice_finish_kernel(const double* __restrict__ terms, ActiveRows active, float* __restrict__ loss) {
  __shared__ double scratch[32];
  const int64_t rows = active.get();
  double sum = 0.0;
  for (int64_t n = threadIdx.x; n < rows; n += blockDim.x) sum += terms[n];
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) *loss = float(sum / double(rows));
}

// grad[n, p] = -grad_loss / M * (2 t den - num) / den^2 * s (1 - s); rows [M, N) get zeros.
__global__ void dice_backward_kernel(const float* __restrict__ x, const float* __restrict__ t, int64_t points,
                                     float eps, const float* __restrict__ grad_loss, ActiveRows active,
                                     float* __restrict__ grad) {
  __shared__ double scratch[32];
  const int64_t rows = active.get();
  const double scale = double(*grad_loss) / double(rows);
  for (int64_t n = blockIdx.x; n < active.rows; n += gridDim.x) {
    const float* xr = x + n * points;
    const float* tr = t + n * points;
    float* g = grad + n * points;
    if (n >= rows) {  // uniform per block
      for (int64_t p = threadIdx.x; p < points; p += blockDim.x) g[p] = 0.f;
      continue;
    }
    const DiceSums d = dice_row_sums(xr, tr, points, scratch);
    const double den = d.s + d.t + eps, num = 2 * d.a + eps, f = -scale / (den * den);
    for (int64_t p = threadIdx.x; p < points; p += blockDim.x) {
      const float v = xr[p];
      g[p] = float(f * (2 * double(tr[p]) * den - num)) * sigmoid(v) * one_minus_sigmoid(v);
    }
  }
}

const float* in(const Tensor& t) { return static_cast<const float*>(t.raw_data()); }
float* out(Tensor& t) { return static_cast<float*>(t.raw_data()); }

unsigned row_blocks(int64_t rows) { return unsigned(std::clamp<int64_t>(rows, 1, 65535)); }

}  // namespace

void cuda::bce_with_logits_mean(const Tensor& x, const Tensor& t, Tensor& loss, const int32_t* active_rows) {
  check_cuda_storage("bce_with_logits_mean", DType::f32, {&x, &t, &loss});
  const int64_t points = x.dim(1);
  const unsigned blocks = partial_blocks(x.numel());
  const Tensor partial = double_scratch(blocks, x.device());
  const ActiveRows active{active_rows, x.dim(0)};
  cudaStream_t stream = stream_of(x);
  bce_partials_kernel<<<blocks, kSumThreads, 0, stream>>>(in(x), in(t), points, active, double_data(partial));
  MFUSER_CUDA_CHECK_LAUNCH();
  bce_finish_kernel<<<1, kSumThreads, 0, stream>>>(double_data(partial), blocks, points, active, out(loss));
  MFUSER_CUDA_CHECK_LAUNCH();
}

void cuda::bce_with_logits_mean_backward(const Tensor& x, const Tensor& t, const Tensor& grad_loss, Tensor& grad_x,
                                         const int32_t* active_rows) {
  check_cuda_storage("bce_with_logits_mean_backward", DType::f32, {&x, &t, &grad_loss, &grad_x});
  constexpr int threads = 256;
  bce_backward_kernel<<<grid_for(x.numel(), threads), threads, 0, stream_of(x)>>>(
      in(x), in(t), in(grad_loss), x.dim(1), ActiveRows{active_rows, x.dim(0)}, out(grad_x));
  MFUSER_CUDA_CHECK_LAUNCH();
}

void cuda::dice_loss(const Tensor& x, const Tensor& t, float eps, Tensor& loss, const int32_t* active_rows) {
  check_cuda_storage("dice_loss", DType::f32, {&x, &t, &loss});
  const int64_t rows = x.dim(0);
  const Tensor terms = double_scratch(rows, x.device());
  const ActiveRows active{active_rows, rows};
  cudaStream_t stream = stream_of(x);
  dice_rows_kernel<<<row_blocks(rows), kSumThreads, 0, stream>>>(in(x), in(t), x.dim(1), eps, active,
                                                                 double_data(terms));
  MFUSER_CUDA_CHECK_LAUNCH();
  dice_finish_kernel<<<1, kSumThreads, 0, stream>>>(double_data(terms), active, out(loss));
  MFUSER_CUDA_CHECK_LAUNCH();
}

void cuda::dice_loss_backward(const Tensor& x, const Tensor& t, float eps, const Tensor& grad_loss, Tensor& grad_x,
                              const int32_t* active_rows) {
  check_cuda_storage("dice_loss_backward", DType::f32, {&x, &t, &grad_loss, &grad_x});
  dice_backward_kernel<<<row_blocks(x.dim(0)), kSumThreads, 0, stream_of(x)>>>(
      in(x), in(t), x.dim(1), eps, in(grad_loss), ActiveRows{active_rows, x.dim(0)}, out(grad_x));
  MFUSER_CUDA_CHECK_LAUNCH();
}

}  // namespace mfuser::kernels
