// CUDA conv2d: im2col into a scratch buffer, then one batched kernels::gemm per group of images (weight
// [O, I*KH*KW] times each image's columns), accumulating onto the bias prefilled into out (beta = 1), as the
// CPU reference does. A 1x1, stride-1, unpadded conv multiplies the images directly, with no scratch.
//
// Scratch: Tensor::empty on x's device, i.e. the caching allocator. After the first (eager) run the same
// sizes come back from its cache, so the captured CUDA-graph run calls no cudaMalloc. It holds at most
// kColumnBudget elements (or one image's columns when that is more): big batches run as several GEMMs.
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


// col[n][k][p] with k = (i * KH + ky) * KW + kx and p = oy * OW + ox: the input pixel that weight[:, i, ky, kx]
// meets at output (oy, ox) of image n, or 0 in the padding. Row (n, k) per y index, its pixels along x.
template <class T>
__global__ void im2col_kernel(const T* __restrict__ images, T* __restrict__ col, ConvGeometry g, int64_t rows) {
  const int pixels = g.oh * g.ow;
  const int64_t kdim = g.in_ch * g.kh * g.kw;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t n = row / kdim, k = row % kdim;
    const int64_t i = k / (g.kh * g.kw), ky = k / g.kw % g.kh, kx = k % g.kw;
    const T* plane = images + (n * g.in_ch + i) * g.h * g.w;
    T* dst = col + row * pixels;
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

}  // namespace

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
            static_cast<const T*>(image_block.raw_data()), static_cast<T*>(col.raw_data()), g, p.batch * kdim);
        MFUSER_CUDA_CHECK_LAUNCH();
      });
    kernels::gemm(weight, direct ? image_block : col, out_block, p);  // the dispatcher: its checks run too
  }
}

}  // namespace mfuser::kernels
