// CUDA sums of squares: every tensor is cut into chunks of kChunk elements. Pass 1 sums each chunk in one block
// (block index = chunk index over all the tensors), pass 2 sums each tensor's chunk partials in one block. The
// cut depends on the sizes only, and so does the order of every addition: no atomics, bitwise repeatable.
#include "kernels/common/double_sums.cuh"
#include "kernels/sum_of_squares/sum_of_squares.h"
#include "runtime/cuda.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

constexpr const char* kOp = "sum_of_squares";

// 32 elements per thread keeps several loads in flight per thread; the real model's ~170M gradient elements
// make ~21k chunks, small tensors (biases, norms) one chunk each.
constexpr int64_t kChunk = int64_t(kSumThreads) * 32;

// One tensor as the kernels see it. The table has one more entry than tensors, whose first_chunk is the total.
struct Span {
  const float* data;
  int64_t size;
  int64_t first_chunk;
};

// The tensor that chunk c belongs to: the last of spans[0, count) starting at or before c (a zero-size tensor
// has no chunks and shares its first_chunk with the next one, which is the owner).
__device__ int owner_of(const Span* spans, int count, int64_t c) {
  int lo = 0, hi = count - 1;  // spans[0].first_chunk == 0 <= c
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (spans[mid].first_chunk <= c) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

__global__ void chunk_sums_kernel(const Span* __restrict__ spans, int count, double* __restrict__ partial) {
  __shared__ double scratch[32];
  const int64_t c = blockIdx.x;
  const Span s = spans[owner_of(spans, count, c)];
  const int64_t begin = (c - s.first_chunk) * kChunk;
  const float* x = s.data + begin;
  const int len = int(min(kChunk, s.size - begin));
  double sum[1] = {0.0};
  // x * x is exact in double (48 significant bits), so a contraction into an FMA changes nothing.
#pragma unroll 4
  for (int i = threadIdx.x; i < len; i += kSumThreads) {
    const double v = x[i];
    sum[0] += v * v;
  }
  store_block_partials<1>(sum, partial, scratch);
}

__global__ void tensor_sums_kernel(const Span* __restrict__ spans, const double* __restrict__ partial,
                                   double* __restrict__ out) {
  __shared__ double scratch[32];
  const int64_t first = spans[blockIdx.x].first_chunk;
  double total[1];
  sum_block_partials<1>(partial + first, spans[blockIdx.x + 1].first_chunk - first, total, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = total[0];
}

}  // namespace

std::vector<double> cuda::sum_of_squares(std::span<const Tensor> tensors) {
  if (tensors.empty()) return {};
  MFUSER_CHECK(tensors.size() < size_t(INT32_MAX), kOp, ": ", tensors.size(), " tensors is too many");
  const int count = int(tensors.size());
  const Device device = tensors.front().device();
  std::vector<Span> spans(size_t(count) + 1);
  int64_t chunks = 0;
  for (int i = 0; i < count; ++i) {
    const Tensor& t = tensors[size_t(i)];
    check_cuda_storage(kOp, DType::f32, {&t});
    spans[size_t(i)] = {t.data<float>(), t.numel(), chunks};
    chunks += ceil_div(t.numel(), kChunk);
  }
  spans[size_t(count)] = {nullptr, 0, chunks};
  MFUSER_CHECK(chunks < INT32_MAX, kOp, ": ", chunks, " chunks exceed one grid");

  const size_t table_bytes = spans.size() * sizeof(Span);
  Tensor table = Tensor::empty({int64_t(table_bytes)}, DType::u8, device);
  mfuser::cuda::copy(table.raw_data(), device, spans.data(), Device::cpu(), table_bytes);
  const Span* d_spans = static_cast<const Span*>(table.raw_data());
  Tensor partial = double_scratch(chunks, device), sums = double_scratch(count, device);
  const cudaStream_t stream = stream_of(tensors.front());
  if (chunks > 0) {
    chunk_sums_kernel<<<unsigned(chunks), kSumThreads, 0, stream>>>(d_spans, count, double_data(partial));
    MFUSER_CUDA_CHECK_LAUNCH();
  }
  tensor_sums_kernel<<<unsigned(count), kSumThreads, 0, stream>>>(d_spans, double_data(partial), double_data(sums));
  MFUSER_CUDA_CHECK_LAUNCH();
  // Synchronous on the stream: the kernels are done before `table` and the scratch go back to the allocator.
  std::vector<double> out(static_cast<size_t>(count));
  mfuser::cuda::copy(out.data(), Device::cpu(), double_data(sums), device, out.size() * sizeof(double));
  return out;
}

}  // namespace mfuser::kernels
