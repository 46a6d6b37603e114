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
#include <algorithm>
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

// ---- backward: two launches, CUDA-core FMAs in f32 for both storage types ----------------------------------
// Nothing from the forward is saved but (optionally) `out`, so probabilities are recomputed per 64 x 64 tile
// from q, k and each query row's logsumexp (lse):  P = exp(S - lse),  dP = dO V^T,  dS = P (dP - delta),
// delta = rowsum(dO * O) = rowsum(P * dP).
//   query kernel (one block per 64 queries): lse by an online pass over the keys; delta from `out` or by a
//     second pass; then dQ = scale dS K by a third pass. Writes lse and delta (f32 scratch) for:
//   key kernel (one block per 64 keys, after it on the stream): dV = P^T dO and dK = scale dS^T Q over every
//     query tile in order. Each gradient row is owned by one block: no atomics, bitwise reproducible.
// 256 threads as a 16 x 16 grid (as the f32 forward): thread (ty, tx) computes score elements rows ty + 16 r,
// columns tx + 16 j (r, j < 4) in registers, so each element's P and dS are formed where its dot product is;
// row reductions (max, sums) over the 16 threads of a row are shuffles within a half warp (xor 1 ... 8). Row
// tiles in shared memory are f32 of row stride 16 kDimChunks + 1 (odd: conflict-free column reads), zero-padded
// past Lq / Lk / d, so padding contributes nothing; padding query rows also get P = 0 explicitly.
// The key kernel visits every query tile even when causal (masked elements get P = 0), so a row whose keys are
// all masked (lse = -inf, P = NaN) makes every grad_k / grad_v row NaN, as the contract says.
constexpr int kBwdThreads = 256;
constexpr int kBwdScoreLd = kKeyTile + 1;
static_assert(kQueryTile == kKeyTile && kQueryTile == 64, "the 16 x 16 thread grid covers 64 x 64 tiles");

template <class T>
struct BackwardArgs {
  AttentionArgs<T> f;  // q, k, v, masks, sizes, scale, causal, query_tiles (f.out is unused)
  const T* out;        // the forward's output, or null: delta = rowsum(P * dP) then
  const T* grad_out;
  T* grad_q;
  T* grad_k;
  T* grad_v;
  float* lse;    // [B * H * Lq] scratch: written by the query kernel, read by the key kernel
  float* delta;  // [B * H * Lq] scratch, likewise
  int key_tiles;
};

// Shared memory of both kernels: four [64, ld] f32 row tiles and two [64, 65] score tiles, in floats.
struct BwdLayout {
  int ld;
  int tile0, tile1, tile2, tile3, scores0, scores1, size;
  __host__ __device__ explicit BwdLayout(int dim_chunks) : ld(16 * dim_chunks + 1) {
    tile0 = 0;
    tile1 = tile0 + kQueryTile * ld;
    tile2 = tile1 + kQueryTile * ld;
    tile3 = tile2 + kQueryTile * ld;
    scores0 = tile3 + kQueryTile * ld;
    scores1 = scores0 + kQueryTile * kBwdScoreLd;
    size = scores1 + kQueryTile * kBwdScoreLd;
  }
};

// Rows [row0, row0 + 64) of a row-major [rows, d] matrix as f32 into a [64, ld] tile (width ld - 1), zero past
// the matrix.
template <class T>
__device__ void load_rows_f32(float* tile, int ld, const T* src, int row0, int rows, int d) {
  const int width = ld - 1;
  for (int e = threadIdx.x; e < kQueryTile * width; e += kBwdThreads) {
    const int r = e / width, c = e % width;
    tile[r * ld + c] = row0 + r < rows && c < d ? to_float(src[int64_t(row0 + r) * d + c]) : 0.f;
  }
}

// dot[r][j] = sum_c a[ty + 16 r][c] b[tx + 16 j][c]: this thread's 4 x 4 elements of A B^T.
__device__ __forceinline__ void tile_dots(const float* a, const float* b, int ld, int d, int ty, int tx,
                                          float (&dot)[4][4]) {
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int j = 0; j < 4; ++j) dot[r][j] = 0.f;
  for (int c = 0; c < d; ++c) {
    float av[4], bv[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) av[r] = a[(ty + 16 * r) * ld + c];
#pragma unroll
    for (int j = 0; j < 4; ++j) bv[j] = b[(tx + 16 * j) * ld + c];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int j = 0; j < 4; ++j) dot[r][j] = fmaf(av[r], bv[j], dot[r][j]);
  }
}

// acc[r][c] += sum_j s[ty + 16 r][j] m[j][tx + 16 c] over the 64 rows of m (a score tile times a row tile).
template <int kDimChunks>
__device__ __forceinline__ void accumulate_product(const float* s, const float* m, int ld, int ty, int tx,
                                                   float (&acc)[4][kDimChunks]) {
  for (int j = 0; j < kKeyTile; ++j) {
    float sv[4], mv[kDimChunks];
#pragma unroll
    for (int r = 0; r < 4; ++r) sv[r] = s[(ty + 16 * r) * kBwdScoreLd + j];
#pragma unroll
    for (int c = 0; c < kDimChunks; ++c) mv[c] = m[j * ld + tx + 16 * c];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < kDimChunks; ++c) acc[r][c] = fmaf(sv[r], mv[c], acc[r][c]);
  }
}

// acc[r][c] += sum_i s[i][ty + 16 r] m[i][tx + 16 c] over the 64 rows of m (a transposed score tile).
template <int kDimChunks>
__device__ __forceinline__ void accumulate_transposed_product(const float* s, const float* m, int ld, int ty, int tx,
                                                              float (&acc)[4][kDimChunks]) {
  for (int i = 0; i < kQueryTile; ++i) {
    float sv[4], mv[kDimChunks];
#pragma unroll
    for (int r = 0; r < 4; ++r) sv[r] = s[i * kBwdScoreLd + ty + 16 * r];
#pragma unroll
    for (int c = 0; c < kDimChunks; ++c) mv[c] = m[i * ld + tx + 16 * c];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < kDimChunks; ++c) acc[r][c] = fmaf(sv[r], mv[c], acc[r][c]);
  }
}

// Sum / max over the 16 threads of one row (lanes tx = 0 ... 15 of a half warp); every one gets the result.
__device__ __forceinline__ float row_sum16(float v) {
  for (int offset = 1; offset < 16; offset <<= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
__device__ __forceinline__ float row_max16(float v) {
  for (int offset = 1; offset < 16; offset <<= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// P of query i (row lse) for key j from the raw dot product: 0 past Lq and for masked keys; NaN for every key
// of an all-masked row (lse = -inf), as the CPU reference.
template <class T>
__device__ __forceinline__ float probability(const AttentionArgs<T>& a, const RowMasks<T>& m, int i, int j,
                                             float dot, float lse) {
  if (i >= a.lq) return 0.f;
  return expf(masked_score(a, m, i, j, dot) - lse);
}

template <class T, int kDimChunks>
__global__ void __launch_bounds__(kBwdThreads) attention_bwd_query_kernel(BackwardArgs<T> g) {
  extern __shared__ __align__(16) float smem_bwd_q[];
  const AttentionArgs<T>& a = g.f;
  const BwdLayout lay(kDimChunks);
  float* q_tile = smem_bwd_q + lay.tile0;
  float* do_tile = smem_bwd_q + lay.tile1;
  float* k_tile = smem_bwd_q + lay.tile2;
  float* v_tile = smem_bwd_q + lay.tile3;
  float* ds_tile = smem_bwd_q + lay.scores0;

  const int64_t bh = blockIdx.x / a.query_tiles;
  const int q0 = int(blockIdx.x % a.query_tiles) * kQueryTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16, d = a.d;
  const T* k = a.k + bh * a.lk * d;
  const T* v = a.v + bh * a.lk * d;
  load_rows_f32(q_tile, lay.ld, a.q + bh * a.lq * d, q0, a.lq, d);
  load_rows_f32(do_tile, lay.ld, g.grad_out + bh * a.lq * d, q0, a.lq, d);

  int query[4];
  RowMasks<T> masks[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    query[r] = q0 + ty + 16 * r;
    masks[r] = row_masks(a, bh, query[r]);
  }
  const int keys = key_end(a, q0);

  // Pass 1: lse per row by an online max / sum (exponentials against 0 while every key so far is masked).
  float lse[4];
  {
    float row_max[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY}, row_sum[4] = {0.f, 0.f, 0.f, 0.f};
    for (int k0 = 0; k0 < keys; k0 += kKeyTile) {
      load_rows_f32(k_tile, lay.ld, k, k0, a.lk, d);
      __syncthreads();
      float dot[4][4];
      tile_dots(q_tile, k_tile, lay.ld, d, ty, tx, dot);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        float tile_max = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          dot[r][j] = masked_score(a, masks[r], query[r], k0 + tx + 16 * j, dot[r][j]);
          tile_max = fmaxf(tile_max, dot[r][j]);
        }
        const float new_max = fmaxf(row_max[r], row_max16(tile_max));
        const float reference = new_max == -INFINITY ? 0.f : new_max;
        float tile_sum = 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j) tile_sum += expf(dot[r][j] - reference);
        row_sum[r] = row_sum[r] * expf(row_max[r] - reference) + row_sum16(tile_sum);
        row_max[r] = new_max;
      }
      __syncthreads();  // the next tile overwrites K
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) lse[r] = row_max[r] == -INFINITY ? -INFINITY : row_max[r] + logf(row_sum[r]);
  }

  // delta per row: rowsum(dO * O) from the saved output, else pass 2: rowsum(P * dP).
  float delta[4] = {0.f, 0.f, 0.f, 0.f};
  if (g.out) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      if (query[r] < a.lq) {
        const T* o = g.out + (bh * a.lq + query[r]) * d;
        for (int c = tx; c < d; c += 16) delta[r] = fmaf(do_tile[(ty + 16 * r) * lay.ld + c], to_float(o[c]), delta[r]);
      }
      delta[r] = row_sum16(delta[r]);
    }
  } else {
    for (int k0 = 0; k0 < keys; k0 += kKeyTile) {
      load_rows_f32(k_tile, lay.ld, k, k0, a.lk, d);
      load_rows_f32(v_tile, lay.ld, v, k0, a.lk, d);
      __syncthreads();
      float dot[4][4], dp[4][4];
      tile_dots(q_tile, k_tile, lay.ld, d, ty, tx, dot);
      tile_dots(do_tile, v_tile, lay.ld, d, ty, tx, dp);
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int j = 0; j < 4; ++j)
          delta[r] = fmaf(probability(a, masks[r], query[r], k0 + tx + 16 * j, dot[r][j], lse[r]), dp[r][j], delta[r]);
      __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) delta[r] = row_sum16(delta[r]);
  }
  if (tx == 0) {
#pragma unroll
    for (int r = 0; r < 4; ++r)
      if (query[r] < a.lq) {
        g.lse[bh * a.lq + query[r]] = lse[r];
        g.delta[bh * a.lq + query[r]] = delta[r];
      }
  }

  // Pass 3: dQ = scale sum_j dS K.
  float acc[4][kDimChunks] = {};
  for (int k0 = 0; k0 < keys; k0 += kKeyTile) {
    load_rows_f32(k_tile, lay.ld, k, k0, a.lk, d);
    load_rows_f32(v_tile, lay.ld, v, k0, a.lk, d);
    __syncthreads();
    float dot[4][4], dp[4][4];
    tile_dots(q_tile, k_tile, lay.ld, d, ty, tx, dot);
    tile_dots(do_tile, v_tile, lay.ld, d, ty, tx, dp);
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float p = probability(a, masks[r], query[r], k0 + tx + 16 * j, dot[r][j], lse[r]);
        ds_tile[(ty + 16 * r) * kBwdScoreLd + tx + 16 * j] = p * (dp[r][j] - delta[r]);
      }
    __syncthreads();
    accumulate_product<kDimChunks>(ds_tile, k_tile, lay.ld, ty, tx, acc);
    __syncthreads();  // the next tile overwrites K, V and dS
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    if (query[r] >= a.lq) continue;
    T* dq = g.grad_q + (bh * a.lq + query[r]) * d;
#pragma unroll
    for (int c = 0; c < kDimChunks; ++c)
      if (tx + 16 * c < d) dq[tx + 16 * c] = from_float<T>(acc[r][c] * a.scale);
  }
}

template <class T, int kDimChunks>
__global__ void __launch_bounds__(kBwdThreads) attention_bwd_key_kernel(BackwardArgs<T> g) {
  extern __shared__ __align__(16) float smem_bwd_k[];
  const AttentionArgs<T>& a = g.f;
  const BwdLayout lay(kDimChunks);
  float* k_tile = smem_bwd_k + lay.tile0;
  float* v_tile = smem_bwd_k + lay.tile1;
  float* q_tile = smem_bwd_k + lay.tile2;
  float* do_tile = smem_bwd_k + lay.tile3;
  float* p_tile = smem_bwd_k + lay.scores0;
  float* ds_tile = smem_bwd_k + lay.scores1;

  const int64_t bh = blockIdx.x / g.key_tiles;
  const int k0 = int(blockIdx.x % g.key_tiles) * kKeyTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16, d = a.d;
  const T* q = a.q + bh * a.lq * d;
  const T* dout = g.grad_out + bh * a.lq * d;
  load_rows_f32(k_tile, lay.ld, a.k + bh * a.lk * d, k0, a.lk, d);
  load_rows_f32(v_tile, lay.ld, a.v + bh * a.lk * d, k0, a.lk, d);

  float dk[4][kDimChunks] = {}, dv[4][kDimChunks] = {};
  for (int q0 = 0; q0 < a.lq; q0 += kQueryTile) {
    load_rows_f32(q_tile, lay.ld, q, q0, a.lq, d);
    load_rows_f32(do_tile, lay.ld, dout, q0, a.lq, d);
    __syncthreads();
    // Score elements: query rows ty + 16 r of this query tile, key columns tx + 16 j of this block's keys.
    float dot[4][4], dp[4][4];
    tile_dots(q_tile, k_tile, lay.ld, d, ty, tx, dot);
    tile_dots(do_tile, v_tile, lay.ld, d, ty, tx, dp);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int i = q0 + ty + 16 * r;
      const RowMasks<T> masks = row_masks(a, bh, i);
      const float lse = i < a.lq ? g.lse[bh * a.lq + i] : 0.f;
      const float delta = i < a.lq ? g.delta[bh * a.lq + i] : 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float p = probability(a, masks, i, k0 + tx + 16 * j, dot[r][j], lse);
        p_tile[(ty + 16 * r) * kBwdScoreLd + tx + 16 * j] = p;
        ds_tile[(ty + 16 * r) * kBwdScoreLd + tx + 16 * j] = p * (dp[r][j] - delta);
      }
    }
    __syncthreads();
    // This thread's gradient rows are keys ty + 16 r, dims tx + 16 c.
    accumulate_transposed_product<kDimChunks>(p_tile, do_tile, lay.ld, ty, tx, dv);
    accumulate_transposed_product<kDimChunks>(ds_tile, q_tile, lay.ld, ty, tx, dk);
    __syncthreads();  // the next query tile overwrites Q, dO, P and dS
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int j = k0 + ty + 16 * r;
    if (j >= a.lk) continue;
    T* gk = g.grad_k + (bh * a.lk + j) * d;
    T* gv = g.grad_v + (bh * a.lk + j) * d;
#pragma unroll
    for (int c = 0; c < kDimChunks; ++c)
      if (tx + 16 * c < d) {
        gk[tx + 16 * c] = from_float<T>(dk[r][c] * a.scale);
        gv[tx + 16 * c] = from_float<T>(dv[r][c]);
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

void cuda::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                              const Tensor& grad_out, Tensor& grad_q, Tensor& grad_k, Tensor& grad_v, bool causal,
                              const Tensor& bool_mask, const Tensor& float_mask, std::optional<float> scale) {
  check_cuda_storage("attention_backward", q.dtype(),
                     {&q, &k, &v, &out, &grad_out, &grad_q, &grad_k, &grad_v, &float_mask});
  MFUSER_CHECK(!bool_mask.defined() || bool_mask.device() == q.device(), "attention_backward: bool_mask ",
               bool_mask.str(), " is not on ", q.str(), "'s device");
  const int64_t batch = q.dim(0), heads = q.dim(1), lq = q.dim(2), lk = k.dim(2), d = q.dim(3);
  MFUSER_CHECK(d <= kMaxHeadDim, "attention_backward: the CUDA kernel takes head dims up to ", kMaxHeadDim,
               ", got q ", q.str());
  const int64_t query_tiles = ceil_div<int64_t>(lq, kQueryTile), key_tiles = ceil_div<int64_t>(lk, kKeyTile);
  MFUSER_CHECK(lq <= INT_MAX - kQueryTile && lk <= INT_MAX - kKeyTile &&
                   batch * heads * std::max(query_tiles, key_tiles) <= INT_MAX,
               "attention_backward: ", q.str(), " with k ", k.str(), " is too large for the CUDA kernel");
  if (batch * heads == 0) return;
  cudaStream_t stream = stream_of(q);
  if (lq == 0) {  // no query: every key gets zero gradient
    MFUSER_CUDA_CHECK(cudaMemsetAsync(grad_k.raw_data(), 0, grad_k.nbytes(), stream));
    MFUSER_CUDA_CHECK(cudaMemsetAsync(grad_v.raw_data(), 0, grad_v.nbytes(), stream));
    return;
  }
  const float alpha = scale.value_or(float(1.0 / std::sqrt(double(d))));
  const auto [bool_batch, bool_head] = mask_strides(bool_mask);
  const auto [float_batch, float_head] = mask_strides(float_mask);
  Tensor lse = Tensor::empty({batch * heads * lq}, DType::f32, q.device());
  Tensor delta = Tensor::empty({batch * heads * lq}, DType::f32, q.device());
  with_storage_type("attention_backward", q.dtype(), [&]<class T>() {
    const BackwardArgs<T> g{
        .f = {.q = static_cast<const T*>(q.raw_data()), .k = static_cast<const T*>(k.raw_data()),
              .v = static_cast<const T*>(v.raw_data()), .out = nullptr,
              .bool_mask = bool_mask.defined() ? bool_mask.data<bool>() : nullptr,
              .float_mask = float_mask.defined() ? static_cast<const T*>(float_mask.raw_data()) : nullptr,
              .bool_batch_stride = bool_batch, .bool_head_stride = bool_head,
              .float_batch_stride = float_batch, .float_head_stride = float_head,
              .heads = int(heads), .lq = int(lq), .lk = int(lk), .d = int(d), .query_tiles = int(query_tiles),
              .scale = alpha, .causal = causal, .aligned16 = false},
        .out = out.defined() ? static_cast<const T*>(out.raw_data()) : nullptr,
        .grad_out = static_cast<const T*>(grad_out.raw_data()),
        .grad_q = static_cast<T*>(grad_q.raw_data()), .grad_k = static_cast<T*>(grad_k.raw_data()),
        .grad_v = static_cast<T*>(grad_v.raw_data()), .lse = lse.data<float>(), .delta = delta.data<float>(),
        .key_tiles = int(key_tiles)};
    with_dim_steps(int(d), [&]<int kDimChunks>() {
      const int smem_bytes = BwdLayout(kDimChunks).size * int(sizeof(float));
      launch(attention_bwd_query_kernel<T, kDimChunks>, kBwdThreads, smem_bytes, batch * heads * query_tiles,
             stream, g);
      launch(attention_bwd_key_kernel<T, kDimChunks>, kBwdThreads, smem_bytes, batch * heads * key_tiles, stream, g);
    });
  });
}

}  // namespace mfuser::kernels
