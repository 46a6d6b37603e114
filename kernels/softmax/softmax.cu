// CUDA softmax forward: one block per row (grid-stride over the rows), one warp for rows up to 32 long,
// at most 256 threads. Three passes over the row in global memory (max, sum of exponentials, normalized
// write), all in f32. A fully masked row has max -inf and exp(-inf - -inf) = NaN fills it: PyTorch's answer.
// out may be x: each element is read and written by one thread only, after both reductions.
// The backward uses the same layout: one block_sum for <grad_out, y>, then the element-wise write.
#include <algorithm>

#include "kernels/common/cuda_common.cuh"
#include "kernels/softmax/softmax.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

// Where row r of x finds its mask: x's leading dims (all but the softmax dim) with the mask's element
// strides over them (0 where the mask broadcasts); along the row the mask advances by `step` (1, or 0 when it
// broadcasts over the softmax dim).
struct MaskIndex {
  int outer_ndim = 0;
  int64_t dims[kMaxDims] = {}, strides[kMaxDims] = {};
  int64_t step = 0;

  __device__ int64_t row_offset(int64_t row) const {
    int64_t offset = 0;
    for (int i = outer_ndim - 1; i >= 0; --i) {
      offset += (row % dims[i]) * strides[i];
      row /= dims[i];
    }
    return offset;
  }
};

// The mask is right-aligned onto x numpy-style (the dispatcher checked that it broadcasts).
MaskIndex mask_index(const Shape& x, const Shape& mask) {
  MaskIndex index;
  const int n = x.ndim(), lead = n - mask.ndim();
  index.outer_ndim = n - 1;
  int64_t contiguous = 1;
  for (int i = n - 1; i >= 0; --i) {
    const int64_t size = i >= lead ? mask[i - lead] : 1;
    const int64_t stride = size == 1 ? 0 : contiguous;
    contiguous *= size;
    if (i == n - 1) {
      index.step = stride;
    } else {
      index.dims[i] = x[i];
      index.strides[i] = stride;
    }
  }
  return index;
}

enum class MaskKind { none, boolean, additive };

// One warp for rows up to 32 long, at most 256 threads.
int threads_for_row(int64_t cols) { return int(std::min<int64_t>(256, ceil_div<int64_t>(cols, 32) * 32)); }

template <class T, MaskKind kMask>
__global__ void softmax_kernel(const T* x, const void* mask, MaskIndex index, T* out, int64_t rows, int64_t cols) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* x_row = x + row * cols;
    T* out_row = out + row * cols;
    const int64_t mask_row = kMask == MaskKind::none ? 0 : index.row_offset(row);
    const auto logit = [&](int64_t j) {
      float value = to_float(x_row[j]);
      if constexpr (kMask == MaskKind::boolean) {
        if (static_cast<const bool*>(mask)[mask_row + j * index.step]) value = -INFINITY;
      } else if constexpr (kMask == MaskKind::additive) {
        value += to_float(static_cast<const T*>(mask)[mask_row + j * index.step]);
      }
      return value;
    };
    float max = -INFINITY;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) max = fmaxf(max, logit(j));
    max = block_max(max, scratch);
    float sum = 0.f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) sum += expf(logit(j) - max);
    sum = block_sum(sum, scratch);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) out_row[j] = from_float<T>(expf(logit(j) - max) / sum);
  }
}

template <class T, MaskKind kMask>
void launch(const Tensor& x, const Tensor& mask, Tensor& out) {
  const int64_t cols = x.dim(-1), rows = x.numel() / cols;
  const int threads = threads_for_row(cols);
  const unsigned blocks = unsigned(std::min<int64_t>(rows, 1 << 20));
  const MaskIndex index = mask.defined() ? mask_index(x.shape(), mask.shape()) : MaskIndex{};
  softmax_kernel<T, kMask><<<blocks, threads, 0, stream_of(x)>>>(static_cast<const T*>(x.raw_data()),
                                                                 mask.defined() ? mask.raw_data() : nullptr, index,
                                                                 static_cast<T*>(out.raw_data()), rows, cols);
  MFUSER_CUDA_CHECK_LAUNCH();
}

// grad_in = y * (grad_out - <grad_out, y>) per row, the same block-per-row layout as the forward. grad_in may
// be y or grad_out: every read of the dot product precedes block_sum's barrier, and each element is then
// read and written by one thread.
template <class T>
__global__ void softmax_backward_kernel(const T* y, const T* grad_out, T* grad_in, int64_t rows, int64_t cols) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* y_row = y + row * cols;
    const T* g_row = grad_out + row * cols;
    T* out_row = grad_in + row * cols;
    float dot = 0.f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) dot += to_float(g_row[j]) * to_float(y_row[j]);
    dot = block_sum(dot, scratch);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
      out_row[j] = from_float<T>(to_float(y_row[j]) * (to_float(g_row[j]) - dot));
  }
}

}  // namespace

void cuda::softmax_backward(const Tensor& y, const Tensor& grad_out, Tensor& grad_in) {
  check_cuda_storage("softmax_backward", y.dtype(), {&y, &grad_out, &grad_in});
  if (y.numel() == 0) return;
  const int64_t cols = y.dim(-1), rows = y.numel() / cols;
  const unsigned blocks = unsigned(std::min<int64_t>(rows, 1 << 20));
  with_storage_type("softmax_backward", y.dtype(), [&]<class T>() {
    softmax_backward_kernel<T><<<blocks, threads_for_row(cols), 0, stream_of(y)>>>(
        static_cast<const T*>(y.raw_data()), static_cast<const T*>(grad_out.raw_data()),
        static_cast<T*>(grad_in.raw_data()), rows, cols);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

void cuda::softmax(const Tensor& x, const Tensor& mask, Tensor& out) {
  check_cuda_storage("softmax", x.dtype(), {&x, &out});
  const bool boolean_mask = mask.defined() && mask.dtype() == DType::boolean;
  if (boolean_mask)
    MFUSER_CHECK(mask.device() == x.device(), "softmax: mask ", mask.str(), " is not on ", x.str(), "'s device");
  else
    check_cuda_storage("softmax", x.dtype(), {&mask});  // additive: x's dtype (nothing when undefined)
  if (x.numel() == 0) return;
  with_storage_type("softmax", x.dtype(), [&]<class T>() {
    if (!mask.defined())
      launch<T, MaskKind::none>(x, mask, out);
    else if (boolean_mask)
      launch<T, MaskKind::boolean>(x, mask, out);
    else
      launch<T, MaskKind::additive>(x, mask, out);
  });
}

}  // namespace mfuser::kernels
