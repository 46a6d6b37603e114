// CUDA cross_entropy (forward and backward), f32: one thread per position i, reading its classes at stride
// `inner`, so in the map case the threads of a warp read adjacent pixels of one class plane.
//
// Forward: each thread adds w_i nll_i and w_i into f64 sums, one partial per block, and a one-block pass adds
// the partials in order and divides (kernels/common/double_sums.cuh). Backward: the same partial pass for the
// weight total when the reduction is weighted_mean, then one thread per position writes its C gradients.
// Nothing is read back to the host, so both can be captured in a CUDA graph.
#include "kernels/common/double_sums.cuh"
#include "kernels/cross_entropy/cross_entropy.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

// Position i = n * inner + s reads class c at ((n * classes + c) * inner + s).
struct Positions {
  int64_t classes, inner, count;
  __device__ int64_t base(int64_t i) const { return (i / inner) * classes * inner + i % inner; }
};

Positions positions_of(const Tensor& logits) {
  Positions p{logits.dim(1), 1, 0};
  for (int d = 2; d < logits.ndim(); ++d) p.inner *= logits.dim(d);
  p.count = logits.dim(0) * p.inner;
  return p;
}

// The weight of target t: 1 without weights; NaN for a target that is neither a class nor ignored (the CPU
// throws there; here the NaN reaches the loss). Not called for ignored positions.
__device__ __forceinline__ float target_weight(int64_t t, const float* weight, int64_t classes) {
  if (t < 0 || t >= classes) return __int_as_float(0x7fc00000);  // quiet NaN
  return weight ? weight[t] : 1.f;
}

// One position's softmax pieces: the max logit, sum_c exp(x_c - max), and that sum over the classes other than
// the target (so 1 - p_target = others / sum without cancellation).
struct SoftmaxSums {
  float max, sum, others;
};

__device__ __forceinline__ SoftmaxSums softmax_sums(const float* x, int64_t classes, int64_t inner, int64_t target) {
  float max = x[0];
  for (int64_t c = 1; c < classes; ++c) max = fmaxf(max, x[c * inner]);
  SoftmaxSums s{max, 0.f, 0.f};
  for (int64_t c = 0; c < classes; ++c) {
    const float e = expf(x[c * inner] - max);
    s.sum += e;
    if (c != target) s.others += e;
  }
  return s;
}

// Partial sums per block: [0] = sum of w_i nll_i (only when kWithLoss), [1] = sum of w_i.
template <bool kWithLoss>
__global__ void cross_entropy_partials_kernel(const float* __restrict__ x, const int64_t* __restrict__ target,
                                              const float* __restrict__ weight, int64_t ignore_index, Positions pos,
                                              double* __restrict__ partial) {
  __shared__ double scratch[32];
  double sums[2] = {0.0, 0.0};
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pos.count;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = target[i];
    if (t == ignore_index) continue;
    const float w = target_weight(t, weight, pos.classes);
    sums[1] += w;
    if (!kWithLoss) continue;
    if (isnan(w)) {  // bad target: never index the logits with it
      sums[0] += w;
      continue;
    }
    const float* xi = x + pos.base(i);
    const SoftmaxSums s = softmax_sums(xi, pos.classes, pos.inner, t);
    const float nll = (s.max - xi[t * pos.inner]) + logf(s.sum);  // both parts >= 0
    sums[0] += double(w) * double(nll);
  }
  store_block_partials(sums, partial, scratch);
}

// loss = total w nll / (total w, or the position count); weight_total (optional) receives total w.
__global__ void cross_entropy_finish_kernel(const double* __restrict__ partial, int64_t blocks, bool weighted,
                                            double positions, float* __restrict__ loss,
                                            double* __restrict__ weight_total) {
  __shared__ double scratch[32];
  double totals[2];
  sum_block_partials(partial, blocks, totals, scratch);
  if (threadIdx.x != 0) return;
  if (loss) *loss = float(totals[0] / (weighted ? totals[1] : positions));
  if (weight_total) *weight_total = totals[1];
}

// grad[i, c] = grad_loss * w_i / D * (p_c - [c == t_i]), D = *weight_total or `positions`.
__global__ void cross_entropy_backward_kernel(const float* __restrict__ x, const int64_t* __restrict__ target,
                                              const float* __restrict__ weight, int64_t ignore_index, Positions pos,
                                              const float* __restrict__ grad_loss,
                                              const double* __restrict__ weight_total, double positions,
                                              float* __restrict__ grad) {
  const double denominator = weight_total ? *weight_total : positions;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pos.count;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = target[i];
    const float* xi = x + pos.base(i);
    float* gi = grad + pos.base(i);
    if (t == ignore_index) {
      for (int64_t c = 0; c < pos.classes; ++c) gi[c * pos.inner] = 0.f;
      continue;
    }
    const float w = target_weight(t, weight, pos.classes);
    if (isnan(w)) {  // bad target
      for (int64_t c = 0; c < pos.classes; ++c) gi[c * pos.inner] = w;
      continue;
    }
    const float f = float(double(*grad_loss) * double(w) / denominator);
    const SoftmaxSums s = softmax_sums(xi, pos.classes, pos.inner, t);
    const float inv_sum = 1.f / s.sum;
    for (int64_t c = 0; c < pos.classes; ++c)
      gi[c * pos.inner] = c == t ? -f * (s.others * inv_sum) : f * (expf(xi[c * pos.inner] - s.max) * inv_sum);
  }
}

const float* optional_data(const Tensor& t) { return t.defined() ? static_cast<const float*>(t.raw_data()) : nullptr; }

// Runs the partial pass and the finish; loss and weight_total may be null (not wanted).
template <bool kWithLoss>
void reduce(const Tensor& logits, const Tensor& target, const Tensor& weight, int64_t ignore_index,
            CrossEntropyReduction reduction, float* loss, double* weight_total) {
  const Positions pos = positions_of(logits);
  const unsigned blocks = partial_blocks(pos.count);
  const Tensor partial = double_scratch(int64_t(blocks) * 2, logits.device());
  cudaStream_t stream = stream_of(logits);
  cross_entropy_partials_kernel<kWithLoss><<<blocks, kSumThreads, 0, stream>>>(
      static_cast<const float*>(logits.raw_data()), static_cast<const int64_t*>(target.raw_data()),
      optional_data(weight), ignore_index, pos, double_data(partial));
  MFUSER_CUDA_CHECK_LAUNCH();
  cross_entropy_finish_kernel<<<1, kSumThreads, 0, stream>>>(double_data(partial), blocks,
                                                             reduction == CrossEntropyReduction::weighted_mean,
                                                             double(pos.count), loss, weight_total);
  MFUSER_CUDA_CHECK_LAUNCH();
}

}  // namespace

void cuda::cross_entropy(const Tensor& logits, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                         CrossEntropyReduction reduction, Tensor& loss) {
  check_cuda_storage("cross_entropy", DType::f32, {&logits, &weight, &loss});
  reduce<true>(logits, target, weight, ignore_index, reduction, static_cast<float*>(loss.raw_data()), nullptr);
}

void cuda::cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& weight,
                                  int64_t ignore_index, CrossEntropyReduction reduction, const Tensor& grad_loss,
                                  Tensor& grad_logits) {
  check_cuda_storage("cross_entropy_backward", DType::f32, {&logits, &weight, &grad_loss, &grad_logits});
  const Positions pos = positions_of(logits);
  if (pos.count == 0) return;
  const bool weighted = reduction == CrossEntropyReduction::weighted_mean;
  Tensor weight_total;
  if (weighted) {
    weight_total = double_scratch(1, logits.device());
    reduce<false>(logits, target, weight, ignore_index, reduction, nullptr, double_data(weight_total));
  }
  constexpr int threads = 256;
  cross_entropy_backward_kernel<<<grid_for(pos.count, threads), threads, 0, stream_of(logits)>>>(
      static_cast<const float*>(logits.raw_data()), static_cast<const int64_t*>(target.raw_data()),
      optional_data(weight), ignore_index, pos, static_cast<const float*>(grad_loss.raw_data()),
      weighted ? double_data(weight_total) : nullptr, double(pos.count), static_cast<float*>(grad_logits.raw_data()));
  MFUSER_CUDA_CHECK_LAUNCH();
}

}  // namespace mfuser::kernels
