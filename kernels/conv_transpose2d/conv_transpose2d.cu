// CUDA conv_transpose2d (stride = kernel): one batched kernels::gemm per group of images computes every tap,
// taps [O*K*K, H*W] = weight^T [O*K*K, I] @ x [I, H*W], into a scratch tensor; a scatter kernel then moves
// each tap to its output pixel and adds the bias. The taps never overlap, so nothing is accumulated.
//
// Scratch: Tensor::empty on x's device, i.e. the caching allocator. After the first (eager) run the same
// sizes come back from its cache, so the captured CUDA-graph run calls no cudaMalloc. It holds at most
// kTapBudget elements (or one image's taps when that is more: the FPN's 2048-channel 64x64 map takes 33.5 M).
//
// Backward, per chunk of images (same budget), deterministic (no float atomics): gather_taps_kernel inverts the
// scatter (grad_out's pixels back to taps), then
//   grad_x      [I, HW] = weight [I, O*K*K] @ taps_n [O*K*K, HW]      (batched GEMM, taps laid out [n][tap][p])
//   grad_weight [I, O*K*K] (+)= x [I, chunk*HW] @ taps [O*K*K, chunk*HW]^T  (one GEMM per chunk: x permuted to
//               channels-major, taps laid out [tap][n][p]; later chunks add on with beta = 1)
//   grad_bias   one block per output channel sums grad_out over images and pixels (fixed order, block_sum).
#include <algorithm>
#include <cstdint>

#include "kernels/common/cuda_common.cuh"
#include "kernels/conv_transpose2d/conv_transpose2d.h"
#include "kernels/gemm/gemm.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

constexpr int64_t kTapBudget = int64_t(1) << 25;
constexpr int kThreads = 256;


struct TapGeometry {
  int64_t out_ch, h;  // output channels, input rows
  int w, k;           // input columns, kernel = stride
};

// out[n, o, Y, X] = taps[n][(o*K + Y%K)*K + X%K][(Y/K)*W + X/K] + bias[o], one output row (n, o, Y) per y index.
template <class T>
__global__ void scatter_taps_kernel(const T* __restrict__ taps, const T* __restrict__ bias, T* __restrict__ out,
                                    TapGeometry g, int64_t rows) {
  const int64_t out_h = g.h * g.k, plane = g.h * g.w;
  const int out_w = g.w * g.k;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t n = row / (g.out_ch * out_h), o = row / out_h % g.out_ch, y = row % out_h;
    const float shift = bias ? to_float(bias[o]) : 0.f;
    // The taps of this output row: channel o, kernel row y % K, input row y / K.
    const T* src = taps + (n * g.out_ch * g.k * g.k + (o * g.k + y % g.k) * g.k) * plane + (y / g.k) * g.w;
    T* dst = out + row * out_w;
    for (int x = blockIdx.x * blockDim.x + threadIdx.x; x < out_w; x += gridDim.x * blockDim.x)
      dst[x] = from_float<T>(to_float(src[(x % g.k) * plane + x / g.k]) + shift);
  }
}

// The inverse of scatter_taps_kernel: taps[n * image_stride + ((o*K + Y%K)*K + X%K) * tap_stride + (Y/K)*W + X/K]
// = grad_out[n, o, Y, X], one grad_out row (n, o, Y) per y index. ([n][tap][p]: image_stride = taps * HW,
// tap_stride = HW; [tap][n][p]: image_stride = HW, tap_stride = images * HW.)
template <class T>
__global__ void gather_taps_kernel(const T* __restrict__ grad_out, T* __restrict__ taps, TapGeometry g,
                                   int64_t rows, int64_t image_stride, int64_t tap_stride) {
  const int64_t out_h = g.h * g.k;
  const int out_w = g.w * g.k;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t n = row / (g.out_ch * out_h), o = row / out_h % g.out_ch, y = row % out_h;
    T* dst = taps + n * image_stride + (o * g.k + y % g.k) * g.k * tap_stride + (y / g.k) * g.w;
    const T* src = grad_out + row * out_w;
    for (int x = blockIdx.x * blockDim.x + threadIdx.x; x < out_w; x += gridDim.x * blockDim.x)
      dst[(x % g.k) * tap_stride + x / g.k] = src[x];
  }
}

}  // namespace

void cuda::conv_transpose2d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                                     Tensor& grad_weight, Tensor& grad_bias) {
  constexpr const char* op = "conv_transpose2d_backward";
  check_cuda_storage(op, x.dtype(), {&x, &weight, &grad_out, &grad_x, &grad_weight, &grad_bias});
  const int64_t images = x.dim(0), in_ch = x.dim(1), out_ch = weight.dim(1), k = weight.dim(2);
  const int64_t pixels = x.dim(2) * x.dim(3), taps = out_ch * k * k;
  MFUSER_CHECK(grad_out.dim(3) <= INT32_MAX && pixels <= INT32_MAX && out_ch <= INT32_MAX, op, ": ",
               grad_out.str(), " is too large");
  const TapGeometry g{out_ch, x.dim(2), int(x.dim(3)), int(k)};
  cudaStream_t stream = stream_of(x);
  with_storage_type(op, x.dtype(), [&]<class T>() {
    if (grad_bias.defined() && out_ch > 0) {
      channel_sums_kernel<T><<<unsigned(out_ch), kThreads, 0, stream>>>(
          static_cast<const T*>(grad_out.raw_data()), static_cast<T*>(grad_bias.raw_data()), images, out_ch,
          grad_out.dim(2) * grad_out.dim(3));
      MFUSER_CUDA_CHECK_LAUNCH();
    }
    if (!grad_x.defined() && !grad_weight.defined()) return;
    if (images == 0 || pixels == 0) {  // no input pixel: grad_weight is an empty sum (grad_x is empty)
      if (grad_weight.defined() && grad_weight.numel() > 0)
        MFUSER_CUDA_CHECK(cudaMemsetAsync(grad_weight.raw_data(), 0, grad_weight.numel() * sizeof(T), stream));
      return;
    }
    const int64_t chunk = std::clamp<int64_t>(kTapBudget / (taps * pixels), 1, images);
    const Tensor tap_buffer = Tensor::empty({chunk, taps, pixels}, x.dtype(), x.device());
    const Tensor x_t = grad_weight.defined() ? Tensor::empty({in_ch, chunk, pixels}, x.dtype(), x.device())
                                             : Tensor();
    for (int64_t n0 = 0; n0 < images; n0 += chunk) {
      const int64_t batch = std::min(chunk, images - n0), rows = batch * out_ch * grad_out.dim(2);
      const Tensor dy_block = grad_out.slice_rows(n0, n0 + batch);
      const auto gather = [&](int64_t image_stride, int64_t tap_stride) {
        gather_taps_kernel<T><<<row_grid(rows, grad_out.dim(3), kThreads), kThreads, 0, stream>>>(
            static_cast<const T*>(dy_block.raw_data()), static_cast<T*>(tap_buffer.raw_data()), g, rows,
            image_stride, tap_stride);
        MFUSER_CUDA_CHECK_LAUNCH();
      };
      if (grad_x.defined()) {
        gather(taps * pixels, pixels);
        Tensor gx_block = grad_x.slice_rows(n0, n0 + batch);
        // Per image: grad_x [I, HW] = weight [I, O*K*K] (shared: stride 0) @ taps [O*K*K, HW].
        const GemmParams p{.m = in_ch, .n = pixels, .k = taps, .batch = batch, .stride_a = 0,
                           .stride_b = taps * pixels, .stride_c = in_ch * pixels};
        kernels::gemm(weight, tap_buffer, gx_block, p);
      }
      if (grad_weight.defined()) {
        gather(pixels, batch * pixels);
        const Tensor x_block = x.slice_rows(n0, n0 + batch);
        nchw_to_cnhw_kernel<T><<<row_grid(batch * in_ch, pixels, kThreads), kThreads, 0, stream>>>(
            static_cast<const T*>(x_block.raw_data()), static_cast<T*>(x_t.raw_data()), in_ch, batch, int(pixels),
            batch * in_ch);
        MFUSER_CUDA_CHECK_LAUNCH();
        // grad_weight [I, O*K*K] (+)= x [I, batch*HW] @ taps [O*K*K, batch*HW]^T.
        const GemmParams p{.m = in_ch, .n = taps, .k = batch * pixels, .trans_b = true,
                           .beta = n0 == 0 ? 0.f : 1.f};
        kernels::gemm(x_t, tap_buffer, grad_weight, p);
      }
    }
  });
}

void cuda::conv_transpose2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out) {
  check_cuda_storage("conv_transpose2d", x.dtype(), {&x, &weight, &bias, &out});
  if (out.numel() == 0) return;
  const int64_t images = x.dim(0), in_ch = x.dim(1), out_ch = weight.dim(1), k = weight.dim(2);
  const int64_t pixels = x.dim(2) * x.dim(3), taps = out_ch * k * k;
  MFUSER_CHECK(out.dim(3) <= INT32_MAX, "conv_transpose2d: ", out.str(), " has too many columns");
  const TapGeometry g{out_ch, x.dim(2), int(x.dim(3)), int(k)};
  const int64_t chunk = std::clamp<int64_t>(kTapBudget / (taps * pixels), 1, images);
  Tensor tap_buffer = Tensor::empty({chunk, taps, pixels}, x.dtype(), x.device());
  cudaStream_t stream = stream_of(x);
  // Per image: taps [O*K*K, HW] = weight^T (weight stored [I, O*K*K], shared: stride 0) @ x [I, HW].
  GemmParams p{.m = taps, .n = pixels, .k = in_ch, .trans_a = true, .stride_a = 0, .stride_b = in_ch * pixels,
               .stride_c = taps * pixels};
  for (int64_t n0 = 0; n0 < images; n0 += chunk) {
    p.batch = std::min(chunk, images - n0);
    kernels::gemm(weight, x.slice_rows(n0, n0 + p.batch), tap_buffer, p);  // the dispatcher: its checks run too
    const Tensor out_block = out.slice_rows(n0, n0 + p.batch);
    const int64_t rows = p.batch * out_ch * out.dim(2);
    with_storage_type("conv_transpose2d", x.dtype(), [&]<class T>() {
      scatter_taps_kernel<T><<<row_grid(rows, out.dim(3), kThreads), kThreads, 0, stream>>>(
          static_cast<const T*>(tap_buffer.raw_data()),
          bias.defined() ? static_cast<const T*>(bias.raw_data()) : nullptr, static_cast<T*>(out_block.raw_data()),
          g, rows);
      MFUSER_CUDA_CHECK_LAUNCH();
    });
  }
}

}  // namespace mfuser::kernels
