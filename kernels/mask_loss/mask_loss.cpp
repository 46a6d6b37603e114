// CPU reference of the Mask2Former decode-head loss (identity assignment, weighted CE, uncertainty-sampled
// BCE and dice) and its backward, built on kernels/cross_entropy, kernels/bce_dice and kernels/point_sample;
// and the device dispatch.
#include "kernels/mask_loss/mask_loss.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/bce_dice/bce_dice.h"
#include "kernels/common/checks.h"
#include "kernels/cross_entropy/cross_entropy.h"
#include "kernels/point_sample/point_sample.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

// ---- config ----

MaskLossConfig MaskLossConfig::mfuser() {
  MaskLossConfig c;
  c.num_classes = 19;
  c.class_weight.assign(19, 1.f);
  c.class_weight.push_back(0.1f);
  return c;
}

// Python's int(float * int): the product in double, truncated.
int64_t MaskLossConfig::num_candidates() const { return int64_t(double(num_points) * oversample_ratio); }
int64_t MaskLossConfig::num_uncertain() const { return int64_t(importance_sample_ratio * double(num_points)); }
int64_t MaskLossConfig::num_random() const { return num_points - num_uncertain(); }

void MaskLossConfig::validate(const char* op) const {
  MFUSER_CHECK(num_classes >= 1, op, ": num_classes must be >= 1, got ", num_classes);
  MFUSER_CHECK(int64_t(class_weight.size()) == num_classes + 1, op, ": class_weight must have num_classes + 1 = ",
               num_classes + 1, " entries (the last for 'no object'), got ", class_weight.size());
  MFUSER_CHECK(num_points >= 1 && num_points <= (int64_t(1) << 30), op, ": num_points must be in [1, 2^30], got ",
               num_points);
  MFUSER_CHECK(std::isfinite(oversample_ratio) && oversample_ratio >= 1 && oversample_ratio <= 1024, op,
               ": oversample_ratio must be in [1, 1024], got ", oversample_ratio);
  MFUSER_CHECK(importance_sample_ratio >= 0 && importance_sample_ratio <= 1, op,
               ": importance_sample_ratio must be in [0, 1], got ", importance_sample_ratio);
  MFUSER_CHECK(std::isfinite(dice_eps), op, ": dice_eps must be finite, got ", dice_eps);
}

namespace {

// ---- shapes and targets ----

struct Dims {
  int64_t batch = 0, queries = 0, classes = 0;  // B, Q, K
  int64_t h = 0, w = 0;                          // mask logits
  int64_t height = 0, width = 0;                 // labels
  int64_t rows() const { return batch * queries; }
};

// Labels [B * Q] (class q % K of a positive query, K otherwise) and the positives as flat b * Q + q, in
// (image, query) order. Validates every label before anything is written.
struct Assignment {
  std::vector<int64_t> labels;
  std::vector<int64_t> positives;
  int64_t image(size_t n, const Dims& d) const { return positives[n] / d.queries; }
  int64_t label(size_t n) const { return labels[size_t(positives[n])]; }
};

Assignment assign(const char* op, const Tensor& gt_seg, const Dims& d, int64_t ignore_index) {
  const int64_t* seg = gt_seg.data<int64_t>();
  const int64_t pixels = d.height * d.width;
  std::vector<char> present(size_t(d.batch * d.classes), 0);
  for (int64_t b = 0; b < d.batch; ++b) {
    char* p = present.data() + b * d.classes;
    const int64_t* s = seg + b * pixels;
    for (int64_t i = 0; i < pixels; ++i) {
      const int64_t v = s[i];
      if (v == ignore_index) continue;
      MFUSER_CHECK(v >= 0 && v < d.classes, op, ": gt_seg value ", v, " at image ", b, ", pixel (", i / d.width,
                   ", ", i % d.width, ") of ", gt_seg.str(), " is neither a class in [0, ", d.classes,
                   ") nor ignore_index ", ignore_index);
      p[v] = 1;
    }
  }
  Assignment a;
  a.labels.assign(size_t(d.rows()), d.classes);
  // identity_assign: query c + k K (k < Q / K) is matched to class c when the image has it.
  const int64_t matched = (d.queries / d.classes) * d.classes;
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t q = 0; q < matched; ++q)
      if (present[size_t(b * d.classes + q % d.classes)]) {
        a.labels[size_t(b * d.queries + q)] = q % d.classes;
        a.positives.push_back(b * d.queries + q);
      }
  return a;
}

void check_labels(const char* op, const Tensor& gt_seg, int64_t batch) {
  MFUSER_CHECK(gt_seg.defined(), op, ": gt_seg is undefined");
  MFUSER_CHECK(gt_seg.dtype() == DType::i64, op, ": gt_seg must be i64, got ", gt_seg.str());
  MFUSER_CHECK(gt_seg.ndim() == 3 && gt_seg.dim(1) >= 1 && gt_seg.dim(2) >= 1, op, ": gt_seg ", gt_seg.str(),
               ": must be [B, H, W], H, W >= 1");
  MFUSER_CHECK(gt_seg.dim(0) == batch, op, ": gt_seg ", gt_seg.str(), " has ", gt_seg.dim(0), " images, the ",
               "predictions ", batch);
}

}  // namespace

MaskLossCounts mask_loss_counts(const Tensor& gt_seg, int64_t queries, const MaskLossConfig& config) {
  constexpr const char* op = "mask_loss_counts";
  config.validate(op);
  MFUSER_CHECK(gt_seg.defined() && gt_seg.device().is_cpu(), op, ": needs the labels on the host");
  check_labels(op, gt_seg, gt_seg.ndim() == 3 ? gt_seg.dim(0) : -1);
  MFUSER_CHECK(queries >= config.num_classes, op, ": ", queries, " queries for ", config.num_classes, " classes");
  Dims d;
  d.batch = gt_seg.dim(0);
  d.queries = queries;
  d.classes = config.num_classes;
  d.height = gt_seg.dim(1);
  d.width = gt_seg.dim(2);
  const Assignment a = assign(op, gt_seg, d, config.ignore_index);
  MaskLossCounts counts;
  for (const int64_t label : a.labels) counts.class_weight_sum += config.class_weight[size_t(label)];
  counts.positives = double(a.positives.size());
  return counts;
}

namespace {

// Dims from whichever of cls_scores / mask_preds is defined (both checked when both are).
Dims check_predictions(const char* op, const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg,
                       const MaskLossConfig& cfg) {
  Dims d;
  d.classes = cfg.num_classes;
  MFUSER_CHECK(cls_scores.defined() || mask_preds.defined(), op, ": cls_scores and mask_preds are both undefined");
  if (cls_scores.defined()) {
    check_f32(op, "cls_scores", cls_scores);
    MFUSER_CHECK(cls_scores.ndim() == 3 && cls_scores.dim(2) == cfg.num_classes + 1, op, ": cls_scores ",
                 cls_scores.str(), ": must be [B, Q, num_classes + 1 = ", cfg.num_classes + 1, "]");
    d.batch = cls_scores.dim(0);
    d.queries = cls_scores.dim(1);
  }
  if (mask_preds.defined()) {
    check_f32(op, "mask_preds", mask_preds);
    MFUSER_CHECK(mask_preds.ndim() == 4 && mask_preds.dim(2) >= 1 && mask_preds.dim(3) >= 1, op, ": mask_preds ",
                 mask_preds.str(), ": must be [B, Q, h, w], h, w >= 1");
    if (cls_scores.defined())
      MFUSER_CHECK(mask_preds.dim(0) == d.batch && mask_preds.dim(1) == d.queries, op, ": mask_preds ",
                   mask_preds.str(), " and cls_scores ", cls_scores.str(), " differ in [B, Q]");
    d.batch = mask_preds.dim(0);
    d.queries = mask_preds.dim(1);
    d.h = mask_preds.dim(2);
    d.w = mask_preds.dim(3);
  }
  MFUSER_CHECK(d.batch >= 1, op, ": no images (B = 0)");
  MFUSER_CHECK(d.queries >= d.classes, op, ": ", d.queries, " queries for ", d.classes,
               " classes: identity assignment needs Q >= num_classes");
  check_labels(op, gt_seg, d.batch);
  d.height = gt_seg.dim(1);
  d.width = gt_seg.dim(2);
  return d;
}

void check_points(const char* op, const char* arg, const Tensor& t, const Dims& d, int64_t count) {
  check_f32(op, arg, t);
  check_shape(op, arg, t, Shape{d.rows(), count, 2});
}

void check_not_alias(const char* op, const char* arg, const Tensor& grad, std::initializer_list<const Tensor*> ins) {
  for (const Tensor* t : ins)
    MFUSER_CHECK(!t->defined() || t->nbytes() == 0 || grad.raw_data() != t->raw_data(), op, ": ", arg,
                 " may not alias an input");
}

// Every argument check of the forward (shapes, dtypes, one device); the dimensions.
Dims check_forward(const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg, const Tensor& candidates,
                   const Tensor& randoms, const MaskLossConfig& cfg, const Tensor& losses, const Tensor& points) {
  constexpr const char* op = "mask_loss";
  cfg.validate(op);
  MFUSER_CHECK(cls_scores.defined() && mask_preds.defined(), op, ": cls_scores and mask_preds are required");
  const Dims d = check_predictions(op, cls_scores, mask_preds, gt_seg, cfg);
  check_points(op, "candidates", candidates, d, cfg.num_candidates());
  check_points(op, "randoms", randoms, d, cfg.num_random());
  check_f32(op, "losses", losses);
  check_shape(op, "losses", losses, Shape{3});
  check_points(op, "points", points, d, cfg.num_points);
  check_same_device(op, {&cls_scores, &mask_preds, &gt_seg, &candidates, &randoms, &losses, &points});
  return d;
}

// Every argument check of the backward; the dimensions.
Dims check_backward(const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg, const Tensor& points,
                    const MaskLossConfig& cfg, const Tensor& grad_losses, const Tensor& grad_cls_scores,
                    const Tensor& grad_mask_preds) {
  constexpr const char* op = "mask_loss_backward";
  cfg.validate(op);
  const bool want_cls = grad_cls_scores.defined(), want_mask = grad_mask_preds.defined();
  MFUSER_CHECK(!want_cls || cls_scores.defined(), op, ": grad_cls_scores is wanted but cls_scores is undefined");
  MFUSER_CHECK(!want_mask || (mask_preds.defined() && points.defined()), op,
               ": grad_mask_preds is wanted but mask_preds or points is undefined");
  const Dims d = check_predictions(op, cls_scores, mask_preds, gt_seg, cfg);
  check_f32(op, "grad_losses", grad_losses);
  check_shape(op, "grad_losses", grad_losses, Shape{3});
  if (points.defined()) check_points(op, "points", points, d, cfg.num_points);
  if (want_cls) {
    check_f32(op, "grad_cls_scores", grad_cls_scores);
    check_shape(op, "grad_cls_scores", grad_cls_scores, cls_scores.shape());
    check_not_alias(op, "grad_cls_scores", grad_cls_scores, {&cls_scores, &mask_preds, &points, &grad_losses});
  }
  if (want_mask) {
    check_f32(op, "grad_mask_preds", grad_mask_preds);
    check_shape(op, "grad_mask_preds", grad_mask_preds, mask_preds.shape());
    check_not_alias(op, "grad_mask_preds", grad_mask_preds, {&cls_scores, &mask_preds, &points, &grad_losses});
    MFUSER_CHECK(!want_cls || grad_mask_preds.raw_data() != grad_cls_scores.raw_data(), op,
                 ": grad_cls_scores and grad_mask_preds may not alias");
  }
  check_same_device(op, {&gt_seg, &cls_scores, &mask_preds, &points, &grad_losses, &grad_cls_scores,
                         &grad_mask_preds});
  return d;
}

Tensor scalar(double v) { return Tensor::from_vector(std::vector<float>{float(v)}, Shape{}); }

// ---- the mask part ----

// The positives' mask logits [N, 1, h, w] (a copy: they are not contiguous in mask_preds).
Tensor gather_positive_masks(const Tensor& mask_preds, const Assignment& a, const Dims& d) {
  const int64_t n = int64_t(a.positives.size()), plane = d.h * d.w;
  Tensor out = Tensor::empty(Shape{n, 1, d.h, d.w}, DType::f32);
  const float* src = mask_preds.data<float>();
  float* dst = out.data<float>();
  for (int64_t i = 0; i < n; ++i) std::copy_n(src + a.positives[size_t(i)] * plane, plane, dst + i * plane);
  return out;
}

// Bilinear sample (align_corners=False, zeros outside) of one h x w map at a normalized point, in double: the
// taps and weights of point_sample, so the ranking of |sample| agrees with a float64 grid_sample.
double sample_double(const float* map, int64_t h, int64_t w, const float* point) {
  const double x = double(point[0]) * double(w) - 0.5, y = double(point[1]) * double(h) - 0.5;
  if (!(x > -1 && y > -1 && x < double(w) && y < double(h))) return 0;  // no corner inside (or NaN)
  const double x0 = std::floor(x), y0 = std::floor(y), fx = x - x0, fy = y - y0;
  const int64_t i0 = int64_t(y0), j0 = int64_t(x0);
  double acc = 0;
  const auto tap = [&](int64_t i, int64_t j, double weight) {
    if (i >= 0 && i < h && j >= 0 && j < w) acc += weight * double(map[i * w + j]);
  };
  tap(i0, j0, (1 - fy) * (1 - fx));
  tap(i0, j0 + 1, (1 - fy) * fx);
  tap(i0 + 1, j0, fy * (1 - fx));
  tap(i0 + 1, j0 + 1, fy * fx);
  return acc;
}

// Writes rows [0, N) of points: per positive the U candidates of smallest |logit| (increasing; ties: smaller
// candidate index first), then its row of randoms.
void choose_points(const Tensor& positive_masks, const Tensor& candidates, const Tensor& randoms,
                   const MaskLossConfig& cfg, const Dims& d, Tensor& points) {
  const int64_t n = positive_masks.dim(0), s_count = candidates.dim(1), r_count = randoms.dim(1);
  const int64_t u_count = cfg.num_uncertain(), p_count = cfg.num_points;
  const float* maps = positive_masks.data<float>();
  const float* cand = candidates.data<float>();
  const float* rnd = randoms.data<float>();
  float* pts = points.data<float>();
  // One task per positive (rows are independent); tiny problems stay serial.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(s_count, 1));
  parallel_for(n, grain, [&](int64_t begin, int64_t end) {
    std::vector<double> score(static_cast<size_t>(s_count));
    std::vector<int64_t> order(static_cast<size_t>(s_count));
    for (int64_t i = begin; i < end; ++i) {
      const float* map = maps + i * d.h * d.w;
      const float* c = cand + i * s_count * 2;
      float* out = pts + i * p_count * 2;
      if (u_count > 0) {
        for (int64_t s = 0; s < s_count; ++s) score[size_t(s)] = std::fabs(sample_double(map, d.h, d.w, c + 2 * s));
        std::iota(order.begin(), order.end(), int64_t(0));
        std::partial_sort(order.begin(), order.begin() + u_count, order.end(), [&](int64_t a, int64_t b) {
          const double sa = score[size_t(a)], sb = score[size_t(b)];
          return sa < sb || (sa == sb && a < b);
        });
        for (int64_t k = 0; k < u_count; ++k) {
          out[2 * k] = c[2 * order[size_t(k)]];
          out[2 * k + 1] = c[2 * order[size_t(k)] + 1];
        }
      }
      std::copy_n(rnd + i * r_count * 2, r_count * 2, out + u_count * 2);
    }
  });
}

// The point predictions x and targets t, both [N, 1, P], at rows [0, N) of points.
struct PointValues {
  Tensor x, t;
};

PointValues sample_points(const Tensor& positive_masks, const Tensor& gt_seg, const Tensor& points,
                          const Assignment& a, const Dims& d, int64_t p_count) {
  const int64_t n = positive_masks.dim(0);
  const Tensor pts = points.slice_rows(0, n);
  PointValues v{Tensor::empty(Shape{n, 1, p_count}, DType::f32), Tensor::empty(Shape{n, 1, p_count}, DType::f32)};
  cpu::point_sample(positive_masks, pts, v.x);
  // Targets: one positive at a time through a 0/1 float mask [1, 1, H, W] of its class (not all N at once:
  // that would be N full-size maps).
  const int64_t pixels = d.height * d.width;
  Tensor mask = Tensor::empty(Shape{1, 1, d.height, d.width}, DType::f32);
  float* m = mask.data<float>();
  const int64_t* seg = gt_seg.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* s = seg + a.image(size_t(i), d) * pixels;
    const int64_t c = a.label(size_t(i));
    for (int64_t j = 0; j < pixels; ++j) m[j] = s[j] == c ? 1.f : 0.f;
    Tensor t_row = v.t.slice_rows(i, i + 1);
    cpu::point_sample(mask, pts.slice_rows(i, i + 1), t_row);
  }
  return v;
}

}  // namespace

// ---- forward ----

void cpu::mask_loss(const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg,
                    const Tensor& candidates, const Tensor& randoms, const MaskLossConfig& cfg, Tensor& losses,
                    Tensor& points) {
  constexpr const char* op = "mask_loss";
  const Dims d = check_forward(cls_scores, mask_preds, gt_seg, candidates, randoms, cfg, losses, points);
  check_host(op, cls_scores);
  const Assignment a = assign(op, gt_seg, d, cfg.ignore_index);

  Tensor loss = Tensor::empty(Shape{}, DType::f32);
  cpu::cross_entropy(cls_scores.reshape(Shape{d.rows(), d.classes + 1}),
                     Tensor::from_vector(a.labels, Shape{d.rows()}),
                     Tensor::from_vector(cfg.class_weight, Shape{d.classes + 1}), -100,
                     CrossEntropyReduction::weighted_mean, loss);
  float* out = losses.data<float>();
  out[0] = float(double(loss.data<float>()[0]) * double(cfg.loss_cls_weight));

  std::fill_n(points.data<float>(), points.numel(), 0.f);
  const int64_t n = int64_t(a.positives.size());
  if (n == 0) {  // no class present in the batch: the oracle's sums over no mask
    out[1] = out[2] = 0.f;
    return;
  }
  const Tensor masks = gather_positive_masks(mask_preds, a, d);
  choose_points(masks, candidates, randoms, cfg, d, points);
  const PointValues v = sample_points(masks, gt_seg, points, a, d, cfg.num_points);
  const Tensor x = v.x.reshape(Shape{n, cfg.num_points}), t = v.t.reshape(Shape{n, cfg.num_points});
  cpu::bce_with_logits_mean(x, t, loss);
  out[1] = float(double(loss.data<float>()[0]) * double(cfg.loss_mask_weight));
  cpu::dice_loss(x, t, cfg.dice_eps, loss);
  out[2] = float(double(loss.data<float>()[0]) * double(cfg.loss_dice_weight));
}

// ---- backward ----

void cpu::mask_loss_backward(const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg,
                             const Tensor& points, const MaskLossConfig& cfg, const Tensor& grad_losses,
                             Tensor& grad_cls_scores, Tensor& grad_mask_preds) {
  constexpr const char* op = "mask_loss_backward";
  const Dims d = check_backward(cls_scores, mask_preds, gt_seg, points, cfg, grad_losses, grad_cls_scores,
                                grad_mask_preds);
  check_host(op, gt_seg);
  const bool want_cls = grad_cls_scores.defined(), want_mask = grad_mask_preds.defined();
  const Assignment a = assign(op, gt_seg, d, cfg.ignore_index);
  const float* g = grad_losses.data<float>();

  if (want_cls) {
    Tensor grad = grad_cls_scores.reshape(Shape{d.rows(), d.classes + 1});
    cpu::cross_entropy_backward(cls_scores.reshape(Shape{d.rows(), d.classes + 1}),
                                Tensor::from_vector(a.labels, Shape{d.rows()}),
                                Tensor::from_vector(cfg.class_weight, Shape{d.classes + 1}), -100,
                                CrossEntropyReduction::weighted_mean,
                                scalar(double(g[0]) * double(cfg.loss_cls_weight)), grad);
  }
  if (!want_mask) return;
  float* gm = grad_mask_preds.data<float>();
  std::fill_n(gm, grad_mask_preds.numel(), 0.f);
  const int64_t n = int64_t(a.positives.size()), p_count = cfg.num_points;
  if (n == 0) return;
  const Tensor masks = gather_positive_masks(mask_preds, a, d);
  const PointValues v = sample_points(masks, gt_seg, points, a, d, p_count);
  const Tensor x = v.x.reshape(Shape{n, p_count}), t = v.t.reshape(Shape{n, p_count});
  Tensor grad_x = Tensor::empty(Shape{n, p_count}, DType::f32);
  Tensor grad_dice = Tensor::empty(Shape{n, p_count}, DType::f32);
  cpu::bce_with_logits_mean_backward(x, t, scalar(double(g[1]) * double(cfg.loss_mask_weight)), grad_x);
  cpu::dice_loss_backward(x, t, cfg.dice_eps, scalar(double(g[2]) * double(cfg.loss_dice_weight)), grad_dice);
  float* gx = grad_x.data<float>();
  const float* gd = grad_dice.data<float>();
  for (int64_t i = 0; i < grad_x.numel(); ++i) gx[i] += gd[i];
  Tensor grad_masks = Tensor::empty(masks.shape(), DType::f32);
  cpu::point_sample_backward(points.slice_rows(0, n), grad_x.reshape(Shape{n, 1, p_count}), grad_masks);
  const int64_t plane = d.h * d.w;
  const float* src = grad_masks.data<float>();
  for (int64_t i = 0; i < n; ++i) std::copy_n(src + i * plane, plane, gm + a.positives[size_t(i)] * plane);
}

// ---- dispatch ----

void mask_loss(const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg, const Tensor& candidates,
               const Tensor& randoms, const MaskLossConfig& config, Tensor& losses, Tensor& points) {
  check_forward(cls_scores, mask_preds, gt_seg, candidates, randoms, config, losses, points);
  if (gt_seg.device().is_cuda())
    return MFUSER_CUDA_KERNEL(
        cuda::mask_loss(cls_scores, mask_preds, gt_seg, candidates, randoms, config, losses, points));
  cpu::mask_loss(cls_scores, mask_preds, gt_seg, candidates, randoms, config, losses, points);
}

void mask_loss_backward(const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg,
                        const Tensor& points, const MaskLossConfig& config, const Tensor& grad_losses,
                        Tensor& grad_cls_scores, Tensor& grad_mask_preds) {
  check_backward(cls_scores, mask_preds, gt_seg, points, config, grad_losses, grad_cls_scores, grad_mask_preds);
  if (gt_seg.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::mask_loss_backward(cls_scores, mask_preds, gt_seg, points, config, grad_losses,
                                                       grad_cls_scores, grad_mask_preds));
  cpu::mask_loss_backward(cls_scores, mask_preds, gt_seg, points, config, grad_losses, grad_cls_scores,
                          grad_mask_preds);
}

}  // namespace mfuser::kernels
