// CUDA conv2d: im2col into a scratch buffer, then one batched kernels::gemm per group of images (weight
// [O, I*KH*KW] times each image's columns), accumulating onto the bias prefilled into out (beta = 1), as the
// CPU reference does. A 1x1, stride-1, unpadded conv multiplies the images directly, with no scratch.
//
// Scratch: Tensor::empty on x's device, i.e. the caching allocator. After the first (eager) run the same
// sizes come back from its cache, so the captured CUDA-graph run calls no cudaMalloc. It holds at most
// kColumnBudget elements (or one image's columns when that is more): big batches run as several GEMMs.
//
// Backward, per chunk of images (same budget), deterministic (no float atomics):
//   grad_x:      columns [n][K][P] = weight^T [K, O] @ grad_out_n [O, P] (batched GEMM), then col2im as a
//                gather: one thread per input pixel adds the column entries that read it, in (ky, kx) order.
//                A 1x1, stride-1, unpadded conv writes weight^T @ grad_out_n straight into grad_x.
//   grad_weight: grad_out permuted to [O, chunk * P] and im2col laid out [K, chunk * P], then one GEMM
//                [O, chunk * P] @ [chunk * P, K] (f32 accumulation inside); later chunks add onto it (beta = 1).
//   grad_bias:   one block per output channel sums grad_out over images and pixels (fixed order, block_sum).
#include <algorithm>
#include <cstdint>

#include "kernels/common/cuda_common.cuh"
#include "kernels/conv2d/conv2d.h"
#include "kernels/gemm/gemm.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

constexpr int64_t kColumnBudget = int64_t(1) << 25;
constexpr int kThreads = 256;

struct ConvGeometry {
  int64_t in_ch, h, w, kh, kw;
  int oh, ow, stride, padding;
};


// Columns of image n, row k = (i * KH + ky) * KW + kx, pixel p = oy * OW + ox: the input pixel that
// weight[:, i, ky, kx] meets at output (oy, ox), or 0 in the padding, stored at col[n * image_stride +
// k * k_stride + p] (forward: [n][k][p]; grad_weight: [k][n][p]). Row (n, k) per y index, its pixels along x.
template <class T>
__global__ void im2col_kernel(const T* __restrict__ images, T* __restrict__ col, ConvGeometry g, int64_t rows,
                              int64_t image_stride, int64_t k_stride) {
  const int pixels = g.oh * g.ow;
  const int64_t kdim = g.in_ch * g.kh * g.kw;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t n = row / kdim, k = row % kdim;
    const int64_t i = k / (g.kh * g.kw), ky = k / g.kw % g.kh, kx = k % g.kw;
    const T* plane = images + (n * g.in_ch + i) * g.h * g.w;
    T* dst = col + n * image_stride + k * k_stride;
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < pixels; p += gridDim.x * blockDim.x) {
      const int64_t y = int64_t(p / g.ow) * g.stride - g.padding + ky;
      const int64_t x = int64_t(p % g.ow) * g.stride - g.padding + kx;
      dst[p] = (y >= 0 && y < g.h && x >= 0 && x < g.w) ? plane[y * g.w + x] : from_float<T>(0.f);
    }
  }
}

// out[n][o][p] = bias[o] for row = n * channels + o: the GEMM then adds the product onto it.
template <class T>
__global__ void fill_bias_kernel(const T* __restrict__ bias, T* __restrict__ out, int64_t channels, int pixels,
                                 int64_t rows) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const T value = bias[row % channels];
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < pixels; p += gridDim.x * blockDim.x)
      out[row * pixels + p] = value;
  }
}

// The inverse of im2col ([n][k][p] columns) as a gather: one thread per input element (n, i, y, x) sums the
// column entries read from it. Only taps ky = (y + padding) mod stride + j * stride land on an output row.
template <class T>
__global__ void col2im_kernel(const T* __restrict__ col, T* __restrict__ images, ConvGeometry g, int64_t count) {
  const int64_t pixels = int64_t(g.oh) * g.ow;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < count; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = e % g.w, y = e / g.w % g.h, ni = e / (g.w * g.h);  // ni = n * I + i
    const T* channel_col = col + ni * g.kh * g.kw * pixels;                // rows k of input channel i, image n
    float acc = 0.f;
    for (int64_t ky = (y + g.padding) % g.stride; ky < g.kh && ky <= y + g.padding; ky += g.stride) {
      const int64_t oy = (y + g.padding - ky) / g.stride;
      if (oy >= g.oh) continue;
      for (int64_t kx = (x + g.padding) % g.stride; kx < g.kw && kx <= x + g.padding; kx += g.stride) {
        const int64_t ox = (x + g.padding - kx) / g.stride;
        if (ox < g.ow) acc += to_float(channel_col[(ky * g.kw + kx) * pixels + oy * g.ow + ox]);
      }
    }
    images[e] = from_float<T>(acc);
  }
}

}  // namespace

void cuda::conv2d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                           Tensor& grad_weight, Tensor& grad_bias, int stride, int padding) {
  constexpr const char* op = "conv2d_backward";
  check_cuda_storage(op, x.dtype(), {&x, &weight, &grad_out, &grad_x, &grad_weight, &grad_bias});
  const int64_t images = x.dim(0), out_ch = weight.dim(0), pixels = grad_out.dim(2) * grad_out.dim(3);
  MFUSER_CHECK(pixels <= INT32_MAX, op, ": ", grad_out.str(), " has too many pixels per channel");
  MFUSER_CHECK(out_ch <= INT32_MAX, op, ": ", weight.str(), " has too many output channels");
  const ConvGeometry g{x.dim(1), x.dim(2), x.dim(3), weight.dim(2), weight.dim(3), int(grad_out.dim(2)),
                       int(grad_out.dim(3)), stride, padding};
  const int64_t kdim = g.in_ch * g.kh * g.kw, image_size = g.in_ch * g.h * g.w;
  const bool direct = g.kh == 1 && g.kw == 1 && stride == 1 && padding == 0;
  const int64_t chunk = std::clamp<int64_t>(kColumnBudget / std::max<int64_t>(1, kdim * pixels), 1,
                                            std::max<int64_t>(1, images));
  cudaStream_t stream = stream_of(x);
  with_storage_type(op, x.dtype(), [&]<class T>() {
    if (grad_bias.defined() && out_ch > 0) {
      channel_sums_kernel<T><<<unsigned(out_ch), kThreads, 0, stream>>>(
          static_cast<const T*>(grad_out.raw_data()), static_cast<T*>(grad_bias.raw_data()), images, out_ch, pixels);
      MFUSER_CUDA_CHECK_LAUNCH();
    }
    if (!grad_x.defined() && !grad_weight.defined()) return;
    if (images == 0) {  // no image: grad_weight is an empty sum (grad_x is empty too)
      if (grad_weight.defined() && grad_weight.numel() > 0)
        MFUSER_CUDA_CHECK(cudaMemsetAsync(grad_weight.raw_data(), 0, grad_weight.numel() * sizeof(T), stream));
      return;
    }
    const bool need_col = grad_weight.defined() || !direct;
    const Tensor col = need_col ? Tensor::empty({chunk, kdim, pixels}, x.dtype(), x.device()) : Tensor();
    const Tensor dy_t = grad_weight.defined() ? Tensor::empty({out_ch, chunk, pixels}, x.dtype(), x.device())
                                              : Tensor();
    for (int64_t n0 = 0; n0 < images; n0 += chunk) {
      const int64_t batch = std::min(chunk, images - n0);
      const Tensor dy_block = grad_out.slice_rows(n0, n0 + batch);
      if (grad_x.defined()) {
        // Per image: [K, P] = weight^T [K, O] @ grad_out_n [O, P] (the weight shared by the batch: stride 0).
        Tensor gx_block = grad_x.slice_rows(n0, n0 + batch);
        const GemmParams p{.m = kdim, .n = pixels, .k = out_ch, .trans_a = true, .batch = batch, .stride_a = 0,
                           .stride_b = out_ch * pixels, .stride_c = direct ? image_size : kdim * pixels};
        Tensor target = direct ? gx_block : col;
        kernels::gemm(weight, dy_block, target, p);
        if (!direct) {
          const int64_t count = batch * image_size;
          col2im_kernel<T><<<grid_for(count, kThreads), kThreads, 0, stream>>>(
              static_cast<const T*>(col.raw_data()), static_cast<T*>(gx_block.raw_data()), g, count);
          MFUSER_CUDA_CHECK_LAUNCH();
        }
      }
      if (grad_weight.defined()) {
        const Tensor x_block = x.slice_rows(n0, n0 + batch);
        im2col_kernel<T><<<row_grid(batch * kdim, pixels, kThreads), kThreads, 0, stream>>>(
            static_cast<const T*>(x_block.raw_data()), static_cast<T*>(col.raw_data()), g, batch * kdim, pixels,
            batch * pixels);
        MFUSER_CUDA_CHECK_LAUNCH();
        nchw_to_cnhw_kernel<T><<<row_grid(batch * out_ch, pixels, kThreads), kThreads, 0, stream>>>(
            static_cast<const T*>(dy_block.raw_data()), static_cast<T*>(dy_t.raw_data()), out_ch, batch,
            int(pixels), batch * out_ch);
        MFUSER_CUDA_CHECK_LAUNCH();
        // grad_weight [O, K] (+)= grad_out [O, batch * P] @ columns [K, batch * P]^T.
        const GemmParams p{.m = out_ch, .n = kdim, .k = batch * pixels, .trans_b = true,
                           .beta = n0 == 0 ? 0.f : 1.f};
        kernels::gemm(dy_t, col, grad_weight, p);
      }
    }
  });
}

void cuda::conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int stride,
                  int padding) {
  check_cuda_storage("conv2d", x.dtype(), {&x, &weight, &bias, &out});
  if (out.numel() == 0) return;
  const int64_t images = x.dim(0), out_ch = weight.dim(0), pixels = out.dim(2) * out.dim(3);
  MFUSER_CHECK(pixels <= INT32_MAX, "conv2d: ", out.str(), " has too many pixels per channel");
  const ConvGeometry g{x.dim(1), x.dim(2), x.dim(3), weight.dim(2), weight.dim(3), int(out.dim(2)), int(out.dim(3)),
                       stride, padding};
  const int64_t kdim = g.in_ch * g.kh * g.kw;
  const bool direct = g.kh == 1 && g.kw == 1 && stride == 1 && padding == 0;
  const int64_t chunk = direct ? images : std::clamp<int64_t>(kColumnBudget / (kdim * pixels), 1, images);
  cudaStream_t stream = stream_of(x);

  if (bias.defined())
    with_storage_type("conv2d", x.dtype(), [&]<class T>() {
      fill_bias_kernel<T><<<row_grid(images * out_ch, pixels, kThreads), kThreads, 0, stream>>>(
          static_cast<const T*>(bias.raw_data()), static_cast<T*>(out.raw_data()), out_ch, int(pixels),
          images * out_ch);
      MFUSER_CUDA_CHECK_LAUNCH();
    });

  // Per image: out [O, P] (+)= weight [O, K] @ columns [K, P]; the weight is shared by the batch (stride 0).
  GemmParams p{.m = out_ch, .n = pixels, .k = kdim, .beta = bias.defined() ? 1.f : 0.f, .stride_a = 0,
               .stride_b = kdim * pixels, .stride_c = out_ch * pixels};
  const Tensor col = direct ? Tensor() : Tensor::empty({chunk, kdim, pixels}, x.dtype(), x.device());
  for (int64_t n0 = 0; n0 < images; n0 += chunk) {
    p.batch = std::min(chunk, images - n0);
    const Tensor image_block = x.slice_rows(n0, n0 + p.batch);
    Tensor out_block = out.slice_rows(n0, n0 + p.batch);
    if (!direct)
      with_storage_type("conv2d", x.dtype(), [&]<class T>() {
        im2col_kernel<T><<<row_grid(p.batch * kdim, pixels, kThreads), kThreads, 0, stream>>>(
            static_cast<const T*>(image_block.raw_data()), static_cast<T*>(col.raw_data()), g, p.batch * kdim,
            kdim * pixels, pixels);
        MFUSER_CUDA_CHECK_LAUNCH();
      });
    kernels::gemm(weight, direct ? image_block : col, out_block, p);  // the dispatcher: its checks run too
  }
}

}  // namespace mfuser::kernels
