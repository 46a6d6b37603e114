// CUDA forward of attention: one fused flash-style kernel per storage type, one launch per call. A block owns
// 64 queries of one (batch, head) and streams the keys through shared memory in tiles of 64 with an online
// softmax (running row max and row sum in f32), so no Lq x Lk score matrix ever reaches global memory.
//   f32   CUDA-core FMAs (TF32 tensor cores would miss the 1e-4 bound).
//   bf16  tensor cores (mma.sync m16n8k16, f32 accumulators, everything per row in registers) for S = Q K^T
//         and O += P V. P is rounded to bf16 for the second product and the row sums add those same rounded
//         values, so every output row stays a convex combination of value rows (relative error ~2^-9 per
//         weight).
// Masked keys (causal, boolean mask, past Lk) get the score -inf. While all keys seen so far are masked, the
// exponentials are taken against 0 instead of the -inf running max, so they come out 0, not NaN; a row whose
// keys are ALL masked ends with sum 0 and output 0 / 0 = NaN, PyTorch's answer.
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "kernels/attention/attention.h"
#include "kernels/common/cuda_common.cuh"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

constexpr int kQueryTile = 64;  // queries per block
constexpr int kKeyTile = 64;    // keys per shared-memory tile
constexpr int kMaxHeadDim = 128;

template <class T>
struct AttentionArgs {
  const T* q;
  const T* k;
  const T* v;
  T* out;
  const bool* bool_mask;  // null when absent
  const T* float_mask;    // null when absent
  // Batch and head strides of the masks: 0 along a broadcast (size-1) dim.
  int64_t bool_batch_stride, bool_head_stride, float_batch_stride, float_head_stride;
  int heads, lq, lk, d;
  int query_tiles;  // blocks per (batch, head)
  float scale;
  bool causal;
  bool aligned16;  // q, k and v start on 16-byte boundaries: whole rows may be copied in 16-byte vectors
};

// The mask rows of one query (null where absent). Padding rows past Lq read no mask.
template <class T>
struct RowMasks {
  const bool* masked = nullptr;
  const T* bias = nullptr;
};

template <class T>
__device__ RowMasks<T> row_masks(const AttentionArgs<T>& a, int64_t bh, int i) {
  RowMasks<T> m;
  if (i >= a.lq) return m;
  const int64_t b = bh / a.heads, h = bh % a.heads, row = int64_t(i) * a.lk;
  if (a.bool_mask) m.masked = a.bool_mask + b * a.bool_batch_stride + h * a.bool_head_stride + row;
  if (a.float_mask) m.bias = a.float_mask + b * a.float_batch_stride + h * a.float_head_stride + row;
  return m;
}

// Score of query i for key j from the raw dot product: scaled, bias added; -inf where the key is masked out
// (past Lk, causal, boolean mask). The Lk test comes first, so no mask is read past the row.
template <class T>
__device__ __forceinline__ float masked_score(const AttentionArgs<T>& a, const RowMasks<T>& m, int i, int j,
                                              float dot) {
  if (j >= a.lk || (a.causal && j > i) || (m.masked && m.masked[j])) return -INFINITY;
  float s = dot * a.scale;
  if (m.bias) s += to_float(m.bias[j]);
  return s;
}

// Rows [row0, row0 + 64) x columns [0, width) of a row-major [rows, d] matrix into a shared tile of row
// stride `ld`, zero past the matrix (rows past `rows`, columns past d), so padding adds nothing to products.
// 16-byte vectors when every vector lies wholly inside or outside the matrix and both sides are aligned.
template <class T, int kThreads>
__device__ void load_tile(T* tile, int ld, int width, const T* src, int64_t row0, int rows, int d, bool aligned16) {
  constexpr int kVec = 16 / sizeof(T);
  if (aligned16 && d % kVec == 0 && ld % kVec == 0 && width % kVec == 0) {
    const int per_row = width / kVec;
    for (int e = threadIdx.x; e < kKeyTile * per_row; e += kThreads) {
      const int r = e / per_row, c = (e % per_row) * kVec;
      uint4 chunk = make_uint4(0, 0, 0, 0);
      if (row0 + r < rows && c < d) chunk = *reinterpret_cast<const uint4*>(src + (row0 + r) * d + c);
      *reinterpret_cast<uint4*>(tile + r * ld + c) = chunk;
    }
  } else {
    for (int e = threadIdx.x; e < kKeyTile * width; e += kThreads) {
      const int r = e / width, c = e % width;
      tile[r * ld + c] = row0 + r < rows && c < d ? src[(row0 + r) * d + c] : from_float<T>(0.f);
    }
  }
}

// Keys past this bound are causally masked for every query of the block starting at q0: skipping their tiles
// changes nothing (they would add exp(-inf) = 0 to every sum).
template <class T>
__device__ int key_end(const AttentionArgs<T>& a, int q0) {
  return a.causal ? min(a.lk, q0 + kQueryTile) : a.lk;
}

// ---- f32: CUDA-core FMAs ----------------------------------------------------------------------------------
// 256 threads as a 16 x 16 grid: thread (ty, tx) owns tile rows ty + 16 r (r < 4) and columns tx + 16 c of
// both products (keys of S, output dims of O), so each pair of shared loads feeds 4+ FMAs. For the softmax
// the same threads regroup as 4 per query row (row tid / 4, columns 16 (tid % 4) ... + 15).
constexpr int kF32Threads = 256;
constexpr int kF32ScoreLd = kKeyTile + 1;

struct F32Layout {
  int qk_ld, v_ld;                     // row strides (floats) of the Q/K tiles and of the V tile
  int q, k, v, s, rescale, sum, size;  // offsets and total size, in floats
  // Odd Q/K stride: the 16 different keys a warp reads in one step fall into 16 different banks. The V tile
  // is zero-padded to the 16 * kDimChunks dims the threads own.
  __host__ __device__ F32Layout(int d, int dim_chunks) : qk_ld(d | 1), v_ld(16 * dim_chunks) {
    q = 0;
    k = q + kQueryTile * qk_ld;
    v = k + kKeyTile * qk_ld;
    s = v + kKeyTile * v_ld;
    rescale = s + kQueryTile * kF32ScoreLd;
    sum = rescale + kQueryTile;
    size = sum + kQueryTile;
  }
};

// kDimChunks = ceil(d / 16): the output dims each thread owns per row (2, 4 or 8: d <= 32, 64, 128).
template <int kDimChunks>
__global__ void __launch_bounds__(kF32Threads) attention_f32_kernel(AttentionArgs<float> a) {
  extern __shared__ __align__(16) float smem_f32[];
  const F32Layout lay(a.d, kDimChunks);
  float* q_tile = smem_f32 + lay.q;
  float* k_tile = smem_f32 + lay.k;
  float* v_tile = smem_f32 + lay.v;
  float* s_tile = smem_f32 + lay.s;
  float* row_rescale = smem_f32 + lay.rescale;
  float* row_sum_of = smem_f32 + lay.sum;

  const int64_t bh = blockIdx.x / a.query_tiles;
  const int q0 = int(blockIdx.x % a.query_tiles) * kQueryTile;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int d = a.d;
  const float* q = a.q + bh * a.lq * d;
  const float* k = a.k + bh * a.lk * d;
  const float* v = a.v + bh * a.lk * d;
  load_tile<float, kF32Threads>(q_tile, lay.qk_ld, d, q, q0, a.lq, d, a.aligned16);

  // Softmax role: 4 threads per row, all holding the row's running max and sum.
  const int soft_row = tid / 4, soft_part = tid % 4, soft_i = q0 + soft_row;
  const RowMasks<float> masks = row_masks(a, bh, soft_i);
  float row_max = -INFINITY, row_sum = 0.f;

  float acc[4][kDimChunks] = {};
  const int keys = key_end(a, q0);
  for (int k0 = 0; k0 < keys; k0 += kKeyTile) {
    load_tile<float, kF32Threads>(k_tile, lay.qk_ld, d, k, k0, a.lk, d, a.aligned16);
    load_tile<float, kF32Threads>(v_tile, lay.v_ld, lay.v_ld, v, k0, a.lk, d, a.aligned16);
    __syncthreads();

    // S = Q K^T (raw dot products; scale and masks are applied by the softmax step).
    float dot[4][4] = {};
    for (int c = 0; c < d; ++c) {
      float qv[4], kv[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) qv[r] = q_tile[(ty + 16 * r) * lay.qk_ld + c];
#pragma unroll
      for (int j = 0; j < 4; ++j) kv[j] = k_tile[(tx + 16 * j) * lay.qk_ld + c];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int j = 0; j < 4; ++j) dot[r][j] = fmaf(qv[r], kv[j], dot[r][j]);
    }
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int j = 0; j < 4; ++j) s_tile[(ty + 16 * r) * kF32ScoreLd + tx + 16 * j] = dot[r][j];
    __syncthreads();

    // Online softmax: scores -> exp(score - running max) in place; the rescale of the older terms to shared.
    {
      float* s = s_tile + soft_row * kF32ScoreLd + 16 * soft_part;
      const int j0 = k0 + 16 * soft_part;
      float tile_max = -INFINITY;
#pragma unroll
      for (int c = 0; c < 16; ++c) {
        s[c] = masked_score(a, masks, soft_i, j0 + c, s[c]);
        tile_max = fmaxf(tile_max, s[c]);
      }
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float new_max = fmaxf(row_max, tile_max);
      const float reference = new_max == -INFINITY ? 0.f : new_max;
      float tile_sum = 0.f;
#pragma unroll
      for (int c = 0; c < 16; ++c) {
        s[c] = expf(s[c] - reference);
        tile_sum += s[c];
      }
      tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, 1);
      tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, 2);
      const float rescale = expf(row_max - reference);  // 0 while row_max is -inf
      row_sum = row_sum * rescale + tile_sum;
      row_max = new_max;
      if (soft_part == 0) row_rescale[soft_row] = rescale;
    }
    __syncthreads();

    // O = O * rescale + P V.
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float rescale = row_rescale[ty + 16 * r];
#pragma unroll
      for (int c = 0; c < kDimChunks; ++c) acc[r][c] *= rescale;
    }
    for (int j = 0; j < kKeyTile; ++j) {
      float p[4], vv[kDimChunks];
#pragma unroll
      for (int r = 0; r < 4; ++r) p[r] = s_tile[(ty + 16 * r) * kF32ScoreLd + j];
#pragma unroll
      for (int c = 0; c < kDimChunks; ++c) vv[c] = v_tile[j * lay.v_ld + tx + 16 * c];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < kDimChunks; ++c) acc[r][c] = fmaf(p[r], vv[c], acc[r][c]);
    }
    __syncthreads();  // the next tile overwrites K, V and S
  }

  if (soft_part == 0) row_sum_of[soft_row] = row_sum;
  __syncthreads();
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int row = ty + 16 * r, i = q0 + row;
    if (i >= a.lq) continue;
    const float sum = row_sum_of[row];
    float* o = a.out + (bh * a.lq + i) * d;
#pragma unroll
    for (int c = 0; c < kDimChunks; ++c)
      if (tx + 16 * c < d) o[tx + 16 * c] = acc[r][c] / sum;  // 0 / 0 = NaN for an all-masked row
  }
}

// ---- bf16: tensor cores -----------------------------------------------------------------------------------
// 4 warps; warp w owns the block's query rows r0 = 16 w ... r0 + 15 in every phase, and everything per row
// stays in registers (the FlashAttention-2 layout). Per key tile of 64, warp w computes S_w = Q_w K^T with
// mma.sync m16n8k16 (bf16 in, f32 accumulate), masks and exponentiates it in registers, and feeds P (rounded
// to bf16) straight back as the A operand of O_w += P V: an m16n8 accumulator tile and an m16k16 A tile hold
// a row's elements in the same lanes. Fragment layouts (PTX ISA, mma.m16n8k16, g = lane / 4, t = lane % 4):
//   A (16 x 16): a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)   [row, cols]
//   B (16 x 8):  b0 (k 2t..2t+1, n g)  b1 (k 2t+8.., n g)
//   C (16 x 8):  c0 c1 (g, 2t..2t+1)  c2 c3 (g+8, 2t..2t+1)
// ldmatrix delivers exactly these from shared memory: A from Q rows, B from K rows (K^T is "col"), and B from
// V rows with .trans. The head dim is zero-padded to 16 kDimSteps (32, 64 or 128).
constexpr int kBf16Warps = kQueryTile / 16;
constexpr int kBf16Threads = 32 * kBf16Warps;

// Shared-memory row stride (bf16) of the Q/K/V tiles: +8 keeps 16-byte rows and spreads the 8 rows that one
// ldmatrix phase reads over all 32 banks.
template <int kDimSteps> constexpr int kBf16Ld = 16 * kDimSteps + 8;
template <int kDimSteps> constexpr int kBf16SmemBytes = 3 * kKeyTile * kBf16Ld<kDimSteps> * int(sizeof(bf16));

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16* row_address) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row_address));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* row_address) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row_address));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}

// c += a b for one m16n8k16 tile.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16x2(__nv_bfloat162 pair) {
  uint32_t bits;
  memcpy(&bits, &pair, sizeof(bits));
  return bits;
}

template <int kDimSteps>
__global__ void __launch_bounds__(kBf16Threads) attention_bf16_kernel(AttentionArgs<bf16> a) {
  constexpr int kDims = 16 * kDimSteps, kLd = kBf16Ld<kDimSteps>;
  extern __shared__ __align__(128) unsigned char smem_bf16[];
  bf16* q_tile = reinterpret_cast<bf16*>(smem_bf16);
  bf16* k_tile = q_tile + kQueryTile * kLd;
  bf16* v_tile = k_tile + kKeyTile * kLd;

  const int64_t bh = blockIdx.x / a.query_tiles;
  const int q0 = int(blockIdx.x % a.query_tiles) * kQueryTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = 16 * warp;
  const int group = lane / 4, quad = lane % 4;
  const int d = a.d;
  const bf16* q = a.q + bh * a.lq * d;
  const bf16* k = a.k + bh * a.lk * d;
  const bf16* v = a.v + bh * a.lk * d;

  load_tile<bf16, kBf16Threads>(q_tile, kLd, kDims, q, q0, a.lq, d, a.aligned16);
  __syncthreads();
  uint32_t q_frag[kDimSteps][4];
#pragma unroll
  for (int kk = 0; kk < kDimSteps; ++kk)
    ldmatrix_x4(q_frag[kk], q_tile + (r0 + lane % 16) * kLd + 16 * kk + 8 * (lane / 16));

  // This lane's two query rows: h = 0 holds accumulator elements c0 c1 (row g), h = 1 holds c2 c3 (row g + 8).
  const int query[2] = {q0 + r0 + group, q0 + r0 + group + 8};
  const RowMasks<bf16> masks[2] = {row_masks(a, bh, query[0]), row_masks(a, bh, query[1])};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  float o[2 * kDimSteps][4] = {};  // O_w: dim tile n (dims 8 n ... 8 n + 7) in C layout

  const int keys = key_end(a, q0);
  for (int k0 = 0; k0 < keys; k0 += kKeyTile) {
    load_tile<bf16, kBf16Threads>(k_tile, kLd, kDims, k, k0, a.lk, d, a.aligned16);
    load_tile<bf16, kBf16Threads>(v_tile, kLd, kDims, v, k0, a.lk, d, a.aligned16);
    __syncthreads();

    // Warp-uniform: warps whose rows are all past Lq, or whose keys of this tile are all causally masked,
    // have nothing to add.
    if (q0 + r0 < a.lq && !(a.causal && k0 > q0 + r0 + 15)) {
      // S_w = Q_w K^T: key tile n (keys 8 n ... 8 n + 7) in C layout; one ldmatrix.x4 feeds two key tiles.
      float s[kKeyTile / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < kDimSteps; ++kk)
#pragma unroll
        for (int n = 0; n < kKeyTile / 8; n += 2) {
          uint32_t b[4];
          ldmatrix_x4(b, k_tile + (8 * n + lane % 8 + 8 * (lane / 16)) * kLd + 16 * kk + 8 * (lane / 8 % 2));
          mma_bf16(s[n], q_frag[kk], b[0], b[1]);
          mma_bf16(s[n + 1], q_frag[kk], b[2], b[3]);
        }

      // Online softmax; the 4 lanes of a quad share rows, so row reductions are two shuffles.
      float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < kKeyTile / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int h = e / 2;
          s[n][e] = masked_score(a, masks[h], query[h], k0 + 8 * n + 2 * quad + e % 2, s[n][e]);
          tile_max[h] = fmaxf(tile_max[h], s[n][e]);
        }
      float reference[2], rescale[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
        const float new_max = fmaxf(row_max[h], tile_max[h]);
        reference[h] = new_max == -INFINITY ? 0.f : new_max;
        rescale[h] = expf(row_max[h] - reference[h]);  // 0 while row_max is -inf
        row_max[h] = new_max;
      }

      // P in bf16 as A fragments (k step j = keys 16 j ... 16 j + 15 = key tiles 2 j, 2 j + 1); the row sums
      // add the rounded values.
      uint32_t p_frag[kKeyTile / 16][4];
      float tile_sum[2] = {0.f, 0.f};
#pragma unroll
      for (int n = 0; n < kKeyTile / 8; ++n)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const __nv_bfloat162 p = __floats2bfloat162_rn(expf(s[n][2 * h] - reference[h]),
                                                         expf(s[n][2 * h + 1] - reference[h]));
          tile_sum[h] += __low2float(p) + __high2float(p);
          p_frag[n / 2][h + 2 * (n % 2)] = pack_bf16x2(p);
        }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        tile_sum[h] += __shfl_xor_sync(0xffffffffu, tile_sum[h], 1);
        tile_sum[h] += __shfl_xor_sync(0xffffffffu, tile_sum[h], 2);
        row_sum[h] = row_sum[h] * rescale[h] + tile_sum[h];
      }

      // O_w = O_w * rescale + P_w V; one ldmatrix.x4.trans feeds two dim tiles.
#pragma unroll
      for (int n = 0; n < 2 * kDimSteps; ++n) {
        o[n][0] *= rescale[0];
        o[n][1] *= rescale[0];
        o[n][2] *= rescale[1];
        o[n][3] *= rescale[1];
      }
#pragma unroll
      for (int j = 0; j < kKeyTile / 16; ++j)
#pragma unroll
        for (int n = 0; n < 2 * kDimSteps; n += 2) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, v_tile + (16 * j + lane % 16) * kLd + 8 * n + 8 * (lane / 16));
          mma_bf16(o[n], p_frag[j], b[0], b[1]);
          mma_bf16(o[n + 1], p_frag[j], b[2], b[3]);
        }
    }
    __syncthreads();  // the next tile overwrites K and V
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (query[h] >= a.lq) continue;
    bf16* out = a.out + (bh * a.lq + query[h]) * d;
#pragma unroll
    for (int n = 0; n < 2 * kDimSteps; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = 8 * n + 2 * quad + e;
        if (c < d) out[c] = from_float<bf16>(o[n][2 * h + e] / row_sum[h]);  // 0 / 0 = NaN: all keys masked
      }
  }
}

// ---- launch -----------------------------------------------------------------------------------------------

// Dynamic shared memory beyond 48 KB must be allowed per kernel (and device) before the launch; cheap, and
// done before every launch so each device the kernel runs on gets it.
template <class Kernel>
void launch(Kernel kernel, int threads, int smem_bytes, int64_t blocks, cudaStream_t stream, const auto& args) {
  MFUSER_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  kernel<<<unsigned(blocks), threads, smem_bytes, stream>>>(args);
  MFUSER_CUDA_CHECK_LAUNCH();
}

// Calls f.template operator()<kSteps>() with the head dim's 16-wide steps, rounded up to 2, 4 or 8 (d <= 32,
// 64, 128): the kernels' register arrays are sized at compile time.
template <class F>
void with_dim_steps(int d, F&& f) {
  if (d <= 32)
    f.template operator()<2>();
  else if (d <= 64)
    f.template operator()<4>();
  else
    f.template operator()<8>();
}

void launch_f32(const AttentionArgs<float>& a, int64_t blocks, cudaStream_t stream) {
  with_dim_steps(a.d, [&]<int kDimChunks>() {
    launch(attention_f32_kernel<kDimChunks>, kF32Threads, F32Layout(a.d, kDimChunks).size * int(sizeof(float)),
           blocks, stream, a);
  });
}

void launch_bf16(const AttentionArgs<bf16>& a, int64_t blocks, cudaStream_t stream) {
  with_dim_steps(a.d, [&]<int kDimSteps>() {
    launch(attention_bf16_kernel<kDimSteps>, kBf16Threads, kBf16SmemBytes<kDimSteps>, blocks, stream, a);
  });
}

// [B or 1, H or 1, Lq, Lk] mask: element offsets between batches and between heads, 0 where broadcast.
std::pair<int64_t, int64_t> mask_strides(const Tensor& mask) {
  if (!mask.defined()) return {0, 0};
  const int64_t head = mask.dim(2) * mask.dim(3);
  return {mask.dim(0) == 1 ? 0 : mask.dim(1) * head, mask.dim(1) == 1 ? 0 : head};
}

bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw_data()) % 16 == 0; }

}  // namespace

void cuda::attention(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, bool causal,
                     const Tensor& bool_mask, const Tensor& float_mask, std::optional<float> scale) {
  check_cuda_storage("attention", q.dtype(), {&q, &k, &v, &out, &float_mask});
  MFUSER_CHECK(!bool_mask.defined() || bool_mask.device() == q.device(), "attention: bool_mask ", bool_mask.str(),
               " is not on ", q.str(), "'s device");
  const int64_t batch = q.dim(0), heads = q.dim(1), lq = q.dim(2), lk = k.dim(2), d = q.dim(3);
  MFUSER_CHECK(d <= kMaxHeadDim, "attention: the CUDA kernel takes head dims up to ", kMaxHeadDim, ", got q ",
               q.str());
  if (q.numel() == 0) return;
  const int64_t query_tiles = ceil_div<int64_t>(lq, kQueryTile), blocks = batch * heads * query_tiles;
  MFUSER_CHECK(lq <= INT_MAX - kQueryTile && lk <= INT_MAX - kKeyTile && blocks <= INT_MAX, "attention: ", q.str(),
               " with k ", k.str(), " is too large for the CUDA kernel");
  const float alpha = scale.value_or(float(1.0 / std::sqrt(double(d))));
  const auto [bool_batch, bool_head] = mask_strides(bool_mask);
  const auto [float_batch, float_head] = mask_strides(float_mask);
  cudaStream_t stream = stream_of(q);
  with_storage_type("attention", q.dtype(), [&]<class T>() {
    const AttentionArgs<T> a{
        .q = static_cast<const T*>(q.raw_data()), .k = static_cast<const T*>(k.raw_data()),
        .v = static_cast<const T*>(v.raw_data()), .out = static_cast<T*>(out.raw_data()),
        .bool_mask = bool_mask.defined() ? bool_mask.data<bool>() : nullptr,
        .float_mask = float_mask.defined() ? static_cast<const T*>(float_mask.raw_data()) : nullptr,
        .bool_batch_stride = bool_batch, .bool_head_stride = bool_head,
        .float_batch_stride = float_batch, .float_head_stride = float_head,
        .heads = int(heads), .lq = int(lq), .lk = int(lk), .d = int(d), .query_tiles = int(query_tiles),
        .scale = alpha, .causal = causal, .aligned16 = aligned16(q) && aligned16(k) && aligned16(v)};
    if constexpr (std::is_same_v<T, float>)
      launch_f32(a, blocks, stream);
    else
      launch_bf16(a, blocks, stream);
  });
}

}  // namespace mfuser::kernels
