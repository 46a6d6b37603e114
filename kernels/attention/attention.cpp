// CPU reference of attention (query-tiled: scores = Q_tile K^T by cblas, masked softmax, Q_tile's output =
// P V by cblas) and of its backward (the same tiles, probabilities recomputed), and the device dispatch.
#include "kernels/attention/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

// Queries per tile: the scores buffer is kQueryTile x Lk floats (1 MB at Lk = 4096).
constexpr int64_t kQueryTile = 64;

void check_mask(const char* arg, const Tensor& mask, DType dtype, const Tensor& q, int64_t lk) {
  if (!mask.defined()) return;
  MFUSER_CHECK(mask.dtype() == dtype, "attention: ", arg, " must be ", dtype_name(dtype), ", got ", mask.str());
  const int64_t b = q.dim(0), h = q.dim(1), lq = q.dim(2);
  MFUSER_CHECK(mask.ndim() == 4 && (mask.dim(0) == 1 || mask.dim(0) == b) && (mask.dim(1) == 1 || mask.dim(1) == h) &&
                   mask.dim(2) == lq && mask.dim(3) == lk,
               "attention: ", arg, " must be [", b, " or 1, ", h, " or 1, ", lq, ", ", lk, "], got ", mask.str());
}

// f32 anywhere, or bf16 on CUDA: q, k, v, out and the float mask share one dtype.
void check_args(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& bool_mask,
                const Tensor& float_mask, std::optional<float> scale) {
  check_float("attention", "q", q);
  check_float_like("attention", "k", k, q);
  check_float_like("attention", "v", v, q);
  check_float_like("attention", "out", out, q);
  MFUSER_CHECK(q.ndim() == 4 && q.dim(3) >= 1, "attention: q must be [B, H, Lq, D >= 1], got ", q.str());
  MFUSER_CHECK(k.ndim() == 4 && k.dim(0) == q.dim(0) && k.dim(1) == q.dim(1) && k.dim(3) == q.dim(3) &&
                   k.dim(2) >= 1,
               "attention: k must be [B, H, Lk >= 1, D] matching q ", q.str(), ", got ", k.str());
  check_shape("attention", "v", v, k.shape());
  check_shape("attention", "out", out, q.shape());
  check_mask("bool_mask", bool_mask, DType::boolean, q, k.dim(2));
  check_mask("float_mask", float_mask, q.dtype(), q, k.dim(2));
  MFUSER_CHECK(!scale || std::isfinite(*scale), "attention: scale must be finite, got ", scale.value_or(0));
  check_same_device("attention", {&q, &k, &v, &out, &bool_mask, &float_mask});
}

void check_backward_args(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& grad_out,
                         const Tensor& grad_q, const Tensor& grad_k, const Tensor& grad_v, const Tensor& bool_mask,
                         const Tensor& float_mask, std::optional<float> scale) {
  constexpr const char* op = "attention_backward";
  // f32 anywhere or bf16 on CUDA, one dtype for every float tensor (gradients in the storage type).
  check_float(op, "q", q);
  check_float_like(op, "grad_out", grad_out, q);
  check_float_like(op, "grad_q", grad_q, q);
  check_float_like(op, "grad_k", grad_k, q);
  check_float_like(op, "grad_v", grad_v, q);
  // The forward's checks cover q, k, v, the masks and the scale; grad_out stands in for `out` there.
  check_args(q, k, v, grad_out, bool_mask, float_mask, scale);
  if (out.defined()) {
    check_float_like(op, "out", out, q);
    check_shape(op, "out", out, q.shape());
  }
  check_shape(op, "grad_q", grad_q, q.shape());
  check_shape(op, "grad_k", grad_k, k.shape());
  check_shape(op, "grad_v", grad_v, k.shape());
  check_same_device(op, {&q, &out, &grad_out, &grad_q, &grad_k, &grad_v});
}

// Row (b, h, i) of a [B or 1, H or 1, Lq, Lk] mask.
template <class T>
const T* mask_row(const Tensor& mask, int64_t b, int64_t h, int64_t i) {
  if (!mask.defined()) return nullptr;
  const int64_t mb = mask.dim(0) == 1 ? 0 : b, mh = mask.dim(1) == 1 ? 0 : h;
  return mask.data<T>() + ((mb * mask.dim(1) + mh) * mask.dim(2) + i) * mask.dim(3);
}

// In place: scores -> probabilities over `n` keys. Masked keys get -inf; an all-masked row becomes NaN
// (exp(-inf - -inf)), which is PyTorch's answer too.
void masked_softmax(float* row, int64_t n, int64_t causal_limit, const bool* masked, const float* bias) {
  for (int64_t j = 0; j < n; ++j) {
    if (bias) row[j] += bias[j];
    if (j > causal_limit || (masked && masked[j])) row[j] = -std::numeric_limits<float>::infinity();
  }
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) max = std::max(max, row[j]);
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    row[j] = std::exp(row[j] - max);
    sum += row[j];
  }
  const float inv = float(1.0 / sum);
  for (int64_t j = 0; j < n; ++j) row[j] *= inv;
}

}  // namespace

void cpu::attention(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, bool causal,
                    const Tensor& bool_mask, const Tensor& float_mask, std::optional<float> scale) {
  check_args(q, k, v, out, bool_mask, float_mask, scale);
  check_host("attention", q);
  const int64_t heads = q.dim(1), lq = q.dim(2), lk = k.dim(2), d = q.dim(3);
  const int64_t tiles = (lq + kQueryTile - 1) / kQueryTile;
  const float alpha = scale.value_or(float(1.0 / std::sqrt(double(d))));
  const float* qs = q.data<float>();
  const float* ks = k.data<float>();
  const float* vs = v.data<float>();
  float* os = out.data<float>();
  // Tiles are independent: each thread takes whole tiles (GEMM, masked softmax, GEMM) with single-threaded
  // BLAS, so the softmax runs in parallel too and no BLAS pool is nested inside OpenMP (that oversubscribes
  // the cores: 10-20x slower on 2 cores, measured).
  SerialBlasScope serial_blas;
  parallel_for(q.dim(0) * heads * tiles, 2, [&](int64_t first, int64_t last) {
    std::vector<float> scores(size_t(std::min(kQueryTile, lq) * lk));
    for (int64_t task = first; task < last; ++task) {
      const int64_t bh = task / tiles, b = bh / heads, h = bh % heads;
      const int64_t q0 = (task % tiles) * kQueryTile, rows = std::min(kQueryTile, lq - q0);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(lk), int(d), alpha,
                  qs + (bh * lq + q0) * d, int(d), ks + bh * lk * d, int(d), 0.f, scores.data(), int(lk));
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = q0 + r;
        masked_softmax(scores.data() + r * lk, lk, causal ? i : lk, mask_row<bool>(bool_mask, b, h, i),
                       mask_row<float>(float_mask, b, h, i));
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(d), int(lk), 1.f, scores.data(),
                  int(lk), vs + bh * lk * d, int(d), 0.f, os + (bh * lq + q0) * d, int(d));
    }
  });
}

// Per query tile, with P recomputed:  dV += P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP)),
// dQ = scale dS K,  dK += scale dS^T Q.  rowsum(P * dP) = rowsum(dO * O) when the forward's output is given.
void cpu::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& grad_out, Tensor& grad_q, Tensor& grad_k, Tensor& grad_v, bool causal,
                             const Tensor& bool_mask, const Tensor& float_mask, std::optional<float> scale) {
  check_backward_args(q, k, v, out, grad_out, grad_q, grad_k, grad_v, bool_mask, float_mask, scale);
  check_host("attention_backward", q);
  const int64_t heads = q.dim(1), lq = q.dim(2), lk = k.dim(2), d = q.dim(3);
  const float alpha = scale.value_or(float(1.0 / std::sqrt(double(d))));
  const float* qs = q.data<float>();
  const float* ks = k.data<float>();
  const float* vs = v.data<float>();
  const float* os = out.defined() ? out.data<float>() : nullptr;
  const float* dos = grad_out.data<float>();
  float* dqs = grad_q.data<float>();
  float* dks = grad_k.data<float>();
  float* dvs = grad_v.data<float>();
  SerialBlasScope serial_blas;  // as in the forward: single-threaded BLAS inside the parallel tasks
  parallel_for(q.dim(0) * heads, 1, [&](int64_t first, int64_t last) {
    const size_t tile_scores = size_t(std::min(kQueryTile, lq) * lk);
    std::vector<float> p(tile_scores), ds(tile_scores);
    for (int64_t bh = first; bh < last; ++bh) {
      const int64_t b = bh / heads, h = bh % heads;
      const float* kh = ks + bh * lk * d;
      const float* vh = vs + bh * lk * d;
      float* dk = dks + bh * lk * d;
      float* dv = dvs + bh * lk * d;
      std::fill(dk, dk + lk * d, 0.f);
      std::fill(dv, dv + lk * d, 0.f);
      for (int64_t q0 = 0; q0 < lq; q0 += kQueryTile) {
        const int64_t rows = std::min(kQueryTile, lq - q0), row0 = bh * lq + q0;
        const float* q_tile = qs + row0 * d;
        const float* do_tile = dos + row0 * d;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(lk), int(d), alpha, q_tile, int(d), kh,
                    int(d), 0.f, p.data(), int(lk));
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = q0 + r;
          masked_softmax(p.data() + r * lk, lk, causal ? i : lk, mask_row<bool>(bool_mask, b, h, i),
                         mask_row<float>(float_mask, b, h, i));
        }
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(lk), int(d), int(rows), 1.f, p.data(), int(lk),
                    do_tile, int(d), 1.f, dv, int(d));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(lk), int(d), 1.f, do_tile, int(d), vh,
                    int(d), 0.f, ds.data(), int(lk));
        for (int64_t r = 0; r < rows; ++r) {
          const float* pr = p.data() + r * lk;
          float* dsr = ds.data() + r * lk;
          double delta = 0;
          if (os) {
            for (int64_t c = 0; c < d; ++c) delta += double(do_tile[r * d + c]) * os[(row0 + r) * d + c];
          } else {
            for (int64_t j = 0; j < lk; ++j) delta += double(pr[j]) * dsr[j];
          }
          for (int64_t j = 0; j < lk; ++j) dsr[j] = pr[j] * float(dsr[j] - delta);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(d), int(lk), alpha, ds.data(), int(lk),
                    kh, int(d), 0.f, dqs + row0 * d, int(d));
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(lk), int(d), int(rows), alpha, ds.data(), int(lk),
                    q_tile, int(d), 1.f, dk, int(d));
      }
    }
  });
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& grad_out,
                        Tensor& grad_q, Tensor& grad_k, Tensor& grad_v, bool causal, const Tensor& bool_mask,
                        const Tensor& float_mask, std::optional<float> scale) {
  check_backward_args(q, k, v, out, grad_out, grad_q, grad_k, grad_v, bool_mask, float_mask, scale);
  if (q.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::attention_backward(q, k, v, out, grad_out, grad_q, grad_k, grad_v, causal,
                                                       bool_mask, float_mask, scale));
  cpu::attention_backward(q, k, v, out, grad_out, grad_q, grad_k, grad_v, causal, bool_mask, float_mask, scale);
}

void attention(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, bool causal, const Tensor& bool_mask,
               const Tensor& float_mask, std::optional<float> scale) {
  check_args(q, k, v, out, bool_mask, float_mask, scale);
  if (q.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::attention(q, k, v, out, causal, bool_mask, float_mask, scale));
  cpu::attention(q, k, v, out, causal, bool_mask, float_mask, scale);
}

}  // namespace mfuser::kernels
