// CUDA mask_loss (forward and backward), f32, composed of the CUDA cross_entropy, point_sample and bce_dice
// kernels plus the steps below; see mask_loss.h for the plan. The number of positives N never leaves the device:
// every kernel covers all B * Q rows and reads N from device memory, so nothing here waits for the GPU and a
// training step stays capturable as one CUDA graph.
#include <algorithm>
#include <cub/device/device_radix_sort.cuh>

#include "kernels/bce_dice/bce_dice.h"
#include "kernels/common/double_sums.cuh"
#include "kernels/cross_entropy/cross_entropy.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/mask_loss/mask_loss.h"
#include "kernels/point_sample/bilinear_taps.cuh"
#include "kernels/point_sample/point_sample.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

constexpr int kThreads = 256;

struct Dims {
  int64_t batch, queries, classes;  // B, Q, K
  int64_t h, w;                     // mask logits (0 when mask_preds is not given)
  int64_t height, width;            // labels
  int64_t rows() const { return batch * queries; }
};

// The dispatchers have checked every shape; either prediction may be undefined in the backward.
Dims dims_of(const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg, const MaskLossConfig& cfg) {
  const Tensor& predictions = mask_preds.defined() ? mask_preds : cls_scores;
  return {gt_seg.dim(0),
          predictions.dim(1),
          cfg.num_classes,
          mask_preds.defined() ? mask_preds.dim(2) : 0,
          mask_preds.defined() ? mask_preds.dim(3) : 0,
          gt_seg.dim(1),
          gt_seg.dim(2)};
}

const float* f32_in(const Tensor& t) { return static_cast<const float*>(t.raw_data()); }
float* f32_out(const Tensor& t) { return static_cast<float*>(t.raw_data()); }
int32_t* i32(const Tensor& t) { return static_cast<int32_t*>(t.raw_data()); }

// ---- identity assignment ----

// present[b * K + v] = 1 for every class v in image b; bad_label = 1 when a value is neither a class nor
// ignore_index. Several threads may store the same 1: no read-modify-write, so no race on the result.
__global__ void presence_kernel(const int64_t* __restrict__ seg, int64_t total, int64_t pixels, int64_t classes,
                                int64_t ignore_index, int32_t* __restrict__ present, int32_t* __restrict__ bad_label) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = seg[i];
    if (v == ignore_index) continue;
    if (v < 0 || v >= classes)
      *bad_label = 1;
    else
      present[(i / pixels) * classes + v] = 1;
  }
}

// One thread, rows in (image, query) order (B * Q is small): labels, ranks, the positives' rows and their count.
__global__ void assign_kernel(const int32_t* __restrict__ present, int64_t batch, int64_t queries, int64_t classes,
                              int64_t* __restrict__ labels, int32_t* __restrict__ rank,
                              int32_t* __restrict__ positive_rows, int32_t* __restrict__ positives) {
  const int64_t matched = (queries / classes) * classes;
  int32_t n = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t q = 0; q < queries; ++q) {
      const int64_t row = b * queries + q;
      const bool positive = q < matched && present[b * classes + q % classes] != 0;
      labels[row] = positive ? q % classes : classes;
      rank[row] = positive ? n : -1;
      if (positive) positive_rows[n++] = int32_t(row);
    }
  *positives = n;
}

// The identity assignment of mask_loss.h, on the device, for the B * Q rows.
struct Assignment {
  Tensor labels;         // i64 [B * Q]: q % K for a positive query, K otherwise (the CE targets)
  Tensor rank;           // i32 [B * Q]: n for the n-th positive (its candidates / points row), -1 otherwise
  Tensor positive_rows;  // i32 [B * Q]: entries [0, N) hold the positives' rows b * Q + q, in order
  Tensor counts;         // i32 [2]: N, and 1 when some gt_seg value was neither a class nor ignore_index
  const int32_t* positives() const { return i32(counts); }
};

Assignment assign(const Tensor& gt_seg, const Dims& d, int64_t ignore_index, cudaStream_t stream) {
  const Device device = gt_seg.device();
  const int64_t rows = d.rows();
  Assignment a{Tensor::empty({rows}, DType::i64, device), Tensor::empty({rows}, DType::i32, device),
               Tensor::empty({rows}, DType::i32, device), Tensor::empty({2}, DType::i32, device)};
  const Tensor present = Tensor::empty({d.batch * d.classes}, DType::i32, device);
  MFUSER_CUDA_CHECK(cudaMemsetAsync(present.raw_data(), 0, present.nbytes(), stream));
  MFUSER_CUDA_CHECK(cudaMemsetAsync(a.counts.raw_data(), 0, a.counts.nbytes(), stream));
  const int64_t total = gt_seg.numel();
  presence_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(
      static_cast<const int64_t*>(gt_seg.raw_data()), total, d.height * d.width, d.classes, ignore_index,
      i32(present), i32(a.counts) + 1);
  MFUSER_CUDA_CHECK_LAUNCH();
  assign_kernel<<<1, 1, 0, stream>>>(i32(present), d.batch, d.queries, d.classes,
                                     static_cast<int64_t*>(a.labels.raw_data()), i32(a.rank), i32(a.positive_rows),
                                     i32(a.counts));
  MFUSER_CUDA_CHECK_LAUNCH();
  return a;
}

// The config's class weights as a device tensor [K + 1]. They travel as kernel arguments, 64 at a time: no host
// synchronization, and safe inside a CUDA-graph capture (the values are baked into the graph like any kernel
// argument), unlike a copy from pageable host memory.
struct FloatChunk {
  static constexpr int kSize = 64;
  float values[kSize];
};

__global__ void store_chunk_kernel(FloatChunk chunk, int count, float* __restrict__ dst) {
  if (int(threadIdx.x) < count) dst[threadIdx.x] = chunk.values[threadIdx.x];
}

Tensor class_weights(const MaskLossConfig& cfg, Device device, cudaStream_t stream) {
  const int64_t count = int64_t(cfg.class_weight.size());
  Tensor weights = Tensor::empty({count}, DType::f32, device);
  for (int64_t begin = 0; begin < count; begin += FloatChunk::kSize) {
    FloatChunk chunk{};
    const int n = int(std::min<int64_t>(FloatChunk::kSize, count - begin));
    std::copy_n(cfg.class_weight.begin() + begin, n, chunk.values);
    store_chunk_kernel<<<1, FloatChunk::kSize, 0, stream>>>(chunk, n, f32_out(weights) + begin);
    MFUSER_CUDA_CHECK_LAUNCH();
  }
  return weights;
}

// ---- the positives' masks and point values ----

// masks[n] = the mask logits of positive n for n < N; zeros for rows [N, B * Q).
__global__ void gather_positive_masks_kernel(const float* __restrict__ mask_preds,
                                             const int32_t* __restrict__ positive_rows,
                                             const int32_t* __restrict__ positives, int64_t total, int64_t plane,
                                             float* __restrict__ masks) {
  const int64_t n_positive = *positives;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / plane;
    masks[i] = n < n_positive ? mask_preds[int64_t(positive_rows[n]) * plane + i % plane] : 0.f;
  }
}

Tensor gather_positive_masks(const Tensor& mask_preds, const Assignment& a, const Dims& d, cudaStream_t stream) {
  Tensor masks = Tensor::empty({d.rows(), 1, d.h, d.w}, DType::f32, mask_preds.device());
  gather_positive_masks_kernel<<<grid_for(masks.numel(), kThreads), kThreads, 0, stream>>>(
      f32_in(mask_preds), i32(a.positive_rows), a.positives(), masks.numel(), d.h * d.w, f32_out(masks));
  MFUSER_CUDA_CHECK_LAUNCH();
  return masks;
}

// t[n, p] = bilinear sample of positive n's 0/1 mask (gt_seg[its image] == its label) at its point p, summed as
// point_sample sums (f32 weights, corners in order), which makes it equal to point_sample of the float mask;
// zeros for rows [N, B * Q).
__global__ void sample_targets_kernel(const int64_t* __restrict__ seg, const int64_t* __restrict__ labels,
                                      const int32_t* __restrict__ positive_rows,
                                      const int32_t* __restrict__ positives, const float* __restrict__ points,
                                      int64_t total, int64_t num_points, int64_t queries, int64_t height,
                                      int64_t width, float* __restrict__ t) {
  const int64_t n_positive = *positives;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / num_points;
    float acc = 0.f;
    BilinearTaps taps;
    if (n < n_positive && bilinear_taps(points[2 * i], points[2 * i + 1], height, width, taps)) {
      const int64_t row = positive_rows[n], label = labels[row];
      const int64_t* map = seg + (row / queries) * height * width;
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (taps.inside(k, height, width) && map[taps.offset(k, width)] == label) acc += float(taps.weight[k]);
    }
    t[i] = acc;
  }
}

// The point predictions x and targets t [B * Q, P] at the points (rows >= N: zeros).
struct PointValues {
  Tensor x, t;
};

PointValues sample_points(const Tensor& masks, const Tensor& gt_seg, const Tensor& points, const Assignment& a,
                          const Dims& d, int64_t num_points, cudaStream_t stream) {
  const Device device = masks.device();
  PointValues v{Tensor::empty({d.rows(), num_points}, DType::f32, device),
                Tensor::empty({d.rows(), num_points}, DType::f32, device)};
  Tensor x = v.x.reshape({d.rows(), 1, num_points});
  cuda::point_sample(masks, points, x);
  const int64_t total = v.t.numel();
  sample_targets_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(
      static_cast<const int64_t*>(gt_seg.raw_data()), static_cast<const int64_t*>(a.labels.raw_data()),
      i32(a.positive_rows), a.positives(), f32_in(points), total, num_points, d.queries, d.height, d.width,
      f32_out(v.t));
  MFUSER_CUDA_CHECK_LAUNCH();
  return v;
}

// ---- the point choice ----

// keys[j] = |m| of candidate j = n * S + s, the bilinear sample of positive n's mask logits at its candidate s,
// in double with every product and sum rounded on its own (no FMA contraction: bit-equal to the CPU's
// sample_double); 0 for rows >= N. order[j] = j.
__global__ void uncertainty_kernel(const float* __restrict__ masks, const float* __restrict__ candidates,
                                   const int32_t* __restrict__ positives, int64_t total, int64_t per_row,
                                   int64_t h, int64_t w, double* __restrict__ keys, int32_t* __restrict__ order) {
  const int64_t n_positive = *positives;
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < total; j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = j / per_row;
    double m = 0.0;
    BilinearTaps taps;
    if (n < n_positive && bilinear_taps(candidates[2 * j], candidates[2 * j + 1], h, w, taps)) {
      const float* map = masks + n * h * w;
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (taps.inside(k, h, w)) m = __dadd_rn(m, __dmul_rn(taps.weight[k], double(map[taps.offset(k, w)])));
    }
    keys[j] = fabs(m);
    order[j] = int32_t(j);
  }
}

__global__ void row_keys_kernel(const int32_t* __restrict__ order, int64_t total, int64_t per_row,
                                uint32_t* __restrict__ rows) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < total; j += int64_t(gridDim.x) * blockDim.x)
    rows[j] = uint32_t(order[j] / per_row);
}

// The candidates of every row ordered by (row, |m|, candidate index), as flat indices n * S + s: a stable radix
// sort by |m| (the input is in index order, so equal |m| keep index order), then a stable one by row.
Tensor order_candidates(const Tensor& masks, const Tensor& candidates, const Assignment& a, const Dims& d,
                        int64_t per_row, cudaStream_t stream) {
  const Device device = masks.device();
  const int64_t total = d.rows() * per_row;
  MFUSER_CHECK(total < int64_t(INT32_MAX), "mask_loss: ", d.rows(), " rows of ", per_row,
               " candidates are too many for 32-bit sort values");
  const Tensor keys = double_scratch(2 * total, device);  // in, sorted
  Tensor order = Tensor::empty({3, total}, DType::i32, device);  // in, after the |m| sort, after the row sort
  int32_t* order_in = i32(order);
  int32_t* order_by_m = order_in + total;
  int32_t* order_by_row = order_by_m + total;
  double* keys_in = double_data(keys);
  double* keys_out = keys_in + total;
  const Tensor row_keys = Tensor::empty({2, total}, DType::i32, device);
  uint32_t* rows_in = static_cast<uint32_t*>(row_keys.raw_data());
  uint32_t* rows_out = rows_in + total;
  int row_bits = 1;
  while (row_bits < 32 && (int64_t(1) << row_bits) < d.rows()) ++row_bits;

  uncertainty_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(
      f32_in(masks), f32_in(candidates), a.positives(), total, per_row, d.h, d.w, keys_in, order_in);
  MFUSER_CUDA_CHECK_LAUNCH();
  size_t by_m_bytes = 0, by_row_bytes = 0;
  MFUSER_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, by_m_bytes, keys_in, keys_out, order_in, order_by_m,
                                                    total, 0, int(sizeof(double) * 8), stream));
  MFUSER_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, by_row_bytes, rows_in, rows_out, order_by_m,
                                                    order_by_row, total, 0, row_bits, stream));
  const Tensor temp = Tensor::empty({int64_t(std::max<size_t>({by_m_bytes, by_row_bytes, 1}))}, DType::u8, device);
  MFUSER_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.raw_data(), by_m_bytes, keys_in, keys_out, order_in,
                                                    order_by_m, total, 0, int(sizeof(double) * 8), stream));
  row_keys_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(order_by_m, total, per_row, rows_in);
  MFUSER_CUDA_CHECK_LAUNCH();
  MFUSER_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.raw_data(), by_row_bytes, rows_in, rows_out, order_by_m,
                                                    order_by_row, total, 0, row_bits, stream));
  return order.slice_rows(2, 3).reshape({total});
}

// points[n, k] = candidate order[n * S + k] for k < U, randoms[n, k - U] after; zeros for rows >= N.
__global__ void write_points_kernel(const int32_t* __restrict__ order, const float* __restrict__ candidates,
                                    const float* __restrict__ randoms, const int32_t* __restrict__ positives,
                                    int64_t total, int64_t per_row, int64_t uncertain, int64_t random,
                                    float* __restrict__ points) {
  const int64_t n_positive = *positives, num_points = uncertain + random;
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < total; j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = j / num_points, k = j % num_points;
    float x = 0.f, y = 0.f;
    if (n < n_positive) {
      const float* source = k < uncertain ? candidates + 2 * int64_t(order[n * per_row + k])
                                          : randoms + 2 * (n * random + k - uncertain);
      x = source[0];
      y = source[1];
    }
    points[2 * j] = x;
    points[2 * j + 1] = y;
  }
}

// ---- losses and upstream gradients ----

// losses = (w_cls ce, w_mask bce, w_dice dice) as the CPU rounds them; the mask terms 0 without positives; all
// NaN after a bad label.
__global__ void finish_losses_kernel(const float* __restrict__ parts, const int32_t* __restrict__ counts,
                                     float3 loss_weights, float* __restrict__ losses) {
  const bool none = counts[0] == 0, bad = counts[1] != 0;
  const float nan = __int_as_float(0x7fc00000);
  losses[0] = bad ? nan : float(double(parts[0]) * double(loss_weights.x));
  losses[1] = bad ? nan : none ? 0.f : float(double(parts[1]) * double(loss_weights.y));
  losses[2] = bad ? nan : none ? 0.f : float(double(parts[2]) * double(loss_weights.z));
}

// upstream[k] = grad_losses[k] * loss weight k (rounded to f32 as the CPU does); NaN after a bad label.
__global__ void scale_upstream_kernel(const float* __restrict__ grad_losses, const int32_t* __restrict__ counts,
                                      float3 loss_weights, float* __restrict__ upstream) {
  const bool bad = counts[1] != 0;
  const float nan = __int_as_float(0x7fc00000);
  upstream[0] = bad ? nan : float(double(grad_losses[0]) * double(loss_weights.x));
  upstream[1] = bad ? nan : float(double(grad_losses[1]) * double(loss_weights.y));
  upstream[2] = bad ? nan : float(double(grad_losses[2]) * double(loss_weights.z));
}

// grad_mask_preds[r] = grad_masks[rank[r]] for a positive row r; zeros for the others.
__global__ void scatter_positive_grads_kernel(const float* __restrict__ grad_masks, const int32_t* __restrict__ rank,
                                              int64_t total, int64_t plane, float* __restrict__ grad_mask_preds) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = rank[i / plane];
    grad_mask_preds[i] = n >= 0 ? grad_masks[n * plane + i % plane] : 0.f;
  }
}

float3 loss_weights(const MaskLossConfig& cfg) {
  return make_float3(cfg.loss_cls_weight, cfg.loss_mask_weight, cfg.loss_dice_weight);
}

// Element k of a device f32 [3] as a 0-d tensor.
Tensor element(const Tensor& three, int64_t k) { return three.slice_rows(k, k + 1).reshape(Shape{}); }

void check_sizes(const char* op, const Dims& d) {
  MFUSER_CHECK(d.rows() < int64_t(INT32_MAX), op, ": ", d.rows(), " (image, query) rows are too many");
}

}  // namespace

void cuda::mask_loss(const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg,
                     const Tensor& candidates, const Tensor& randoms, const MaskLossConfig& cfg, Tensor& losses,
                     Tensor& points) {
  constexpr const char* op = "mask_loss";
  check_cuda_storage(op, DType::f32, {&cls_scores, &mask_preds, &candidates, &randoms, &losses, &points});
  const Dims d = dims_of(cls_scores, mask_preds, gt_seg, cfg);
  check_sizes(op, d);
  const Device device = gt_seg.device();
  cudaStream_t stream = stream_of(gt_seg);
  const Assignment a = assign(gt_seg, d, cfg.ignore_index, stream);
  const Tensor parts = Tensor::empty({3}, DType::f32, device);  // ce, bce, dice before the loss weights

  Tensor ce = element(parts, 0);
  cuda::cross_entropy(cls_scores.reshape({d.rows(), d.classes + 1}), a.labels, class_weights(cfg, device, stream),
                      -100, CrossEntropyReduction::weighted_mean, ce);

  const int64_t uncertain = cfg.num_uncertain(), per_row = cfg.num_candidates();
  const Tensor masks = gather_positive_masks(mask_preds, a, d, stream);
  const Tensor order = uncertain > 0 ? order_candidates(masks, candidates, a, d, per_row, stream) : Tensor();
  write_points_kernel<<<grid_for(d.rows() * cfg.num_points, kThreads), kThreads, 0, stream>>>(
      uncertain > 0 ? i32(order) : nullptr, f32_in(candidates), f32_in(randoms), a.positives(),
      d.rows() * cfg.num_points, per_row, uncertain, cfg.num_random(), f32_out(points));
  MFUSER_CUDA_CHECK_LAUNCH();

  const PointValues v = sample_points(masks, gt_seg, points, a, d, cfg.num_points, stream);
  Tensor bce = element(parts, 1), dice = element(parts, 2);
  cuda::bce_with_logits_mean(v.x, v.t, bce, a.positives());
  cuda::dice_loss(v.x, v.t, cfg.dice_eps, dice, a.positives());
  finish_losses_kernel<<<1, 1, 0, stream>>>(f32_in(parts), i32(a.counts), loss_weights(cfg), f32_out(losses));
  MFUSER_CUDA_CHECK_LAUNCH();
}

void cuda::mask_loss_backward(const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg,
                              const Tensor& points, const MaskLossConfig& cfg, const Tensor& grad_losses,
                              Tensor& grad_cls_scores, Tensor& grad_mask_preds) {
  constexpr const char* op = "mask_loss_backward";
  check_cuda_storage(op, DType::f32,
                     {&cls_scores, &mask_preds, &points, &grad_losses, &grad_cls_scores, &grad_mask_preds});
  const Dims d = dims_of(cls_scores, mask_preds, gt_seg, cfg);
  check_sizes(op, d);
  const Device device = gt_seg.device();
  cudaStream_t stream = stream_of(gt_seg);
  const Assignment a = assign(gt_seg, d, cfg.ignore_index, stream);
  const Tensor upstream = Tensor::empty({3}, DType::f32, device);
  scale_upstream_kernel<<<1, 1, 0, stream>>>(f32_in(grad_losses), i32(a.counts), loss_weights(cfg),
                                             f32_out(upstream));
  MFUSER_CUDA_CHECK_LAUNCH();

  if (grad_cls_scores.defined()) {
    Tensor grad = grad_cls_scores.reshape({d.rows(), d.classes + 1});
    cuda::cross_entropy_backward(cls_scores.reshape({d.rows(), d.classes + 1}), a.labels,
                                 class_weights(cfg, device, stream), -100, CrossEntropyReduction::weighted_mean,
                                 element(upstream, 0), grad);
  }
  if (!grad_mask_preds.defined()) return;
  const int64_t num_points = cfg.num_points;
  const Tensor masks = gather_positive_masks(mask_preds, a, d, stream);
  const PointValues v = sample_points(masks, gt_seg, points, a, d, num_points, stream);
  Tensor grad_x = Tensor::empty({d.rows(), num_points}, DType::f32, device);
  Tensor grad_dice = Tensor::empty({d.rows(), num_points}, DType::f32, device);
  cuda::bce_with_logits_mean_backward(v.x, v.t, element(upstream, 1), grad_x, a.positives());
  cuda::dice_loss_backward(v.x, v.t, cfg.dice_eps, element(upstream, 2), grad_dice, a.positives());
  cuda::add(grad_x, grad_dice, grad_x);
  Tensor grad_masks = Tensor::empty(masks.shape(), DType::f32, device);
  cuda::point_sample_backward(points, grad_x.reshape({d.rows(), 1, num_points}), grad_masks);
  scatter_positive_grads_kernel<<<grid_for(grad_mask_preds.numel(), kThreads), kThreads, 0, stream>>>(
      f32_in(grad_masks), i32(a.rank), grad_mask_preds.numel(), d.h * d.w, f32_out(grad_mask_preds));
  MFUSER_CUDA_CHECK_LAUNCH();
}

}  // namespace mfuser::kernels
