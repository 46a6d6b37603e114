// The training losses as graph nodes (graph/model/loss.h): their backward rules against central differences
// (frozen inputs, query copies, no positive, a prediction used by two losses), the graph's values against
// direct kernel calls, and build-time argument checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "graph/model/loss.h"
#include "kernels/cross_entropy/cross_entropy.h"
#include "kernels/resize/resize.h"
#include "tests/graph/grad_check.h"

namespace mfuser {
namespace {

using graph::ValueId;
using model::Builder;
using model::MaskLossConfig;
using test::GradInput;
using test::uniform;

// The central differences perturb one mask logit by this much; the point choice must not change under it.
constexpr float kStep = 1e-2f;

// Bilinear sample (align_corners=False, zeros outside) in double, as the op ranks its candidates.
double bilinear(const float* map, int64_t h, int64_t w, const float* p) {
  const double x = double(p[0]) * double(w) - 0.5, y = double(p[1]) * double(h) - 0.5;
  const double x0 = std::floor(x), y0 = std::floor(y), fx = x - x0, fy = y - y0;
  double acc = 0;
  for (int k = 0; k < 4; ++k) {
    const int64_t i = int64_t(y0) + k / 2, j = int64_t(x0) + k % 2;
    if (i < 0 || i >= h || j < 0 || j >= w) continue;
    acc += (k / 2 ? fy : 1 - fy) * (k % 2 ? fx : 1 - fx) * double(map[i * w + j]);
  }
  return acc;
}

// A small mask-loss problem: B images, Q queries, K classes, h x w logits, H x W labels, P points (S = 3P
// candidates, U = 3P/4 uncertain). Image b's labels draw from `classes[b]` (255 = ignore).
struct MaskProblem {
  MaskLossConfig cfg;
  Tensor cls, mask, seg, candidates, randoms;

  MaskProblem(int64_t B, int64_t Q, int64_t K, int64_t h, int64_t w, int64_t H, int64_t W, int64_t P,
              const std::vector<std::vector<int64_t>>& classes) {
    cfg.num_classes = K;
    cfg.class_weight.clear();
    for (int64_t c = 0; c < K; ++c) cfg.class_weight.push_back(0.5f + float(c % 3) * 0.5f);
    cfg.class_weight.push_back(0.1f);
    cfg.num_points = P;
    cls = uniform({B, Q, K + 1}, -2.f, 2.f);
    mask = uniform({B, Q, h, w}, -2.f, 2.f);
    seg = Tensor::empty({B, H, W}, DType::i64);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < H * W; ++i)
        seg.data<int64_t>()[b * H * W + i] = classes[size_t(b)][test::rng()() % classes[size_t(b)].size()];
    candidates = uniform({B * Q, cfg.num_candidates(), 2}, 0.f, 1.f);
    randoms = uniform({B * Q, cfg.num_random(), 2}, 0.f, 1.f);
    separate();
  }

  // Redraws the candidate rows of the positives until the U-th and (U+1)-th smallest |logit| are 5 steps apart:
  // a central difference then never changes which points are chosen.
  void separate() {
    const int64_t B = cls.dim(0), Q = cls.dim(1), K = cfg.num_classes, h = mask.dim(2), w = mask.dim(3);
    const int64_t pixels = seg.dim(1) * seg.dim(2), S = cfg.num_candidates(), U = cfg.num_uncertain();
    int64_t row = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t q = 0; q < (Q / K) * K; ++q) {
        const int64_t* s = seg.data<int64_t>() + b * pixels;
        if (std::find(s, s + pixels, q % K) == s + pixels) continue;  // not a positive
        float* cand = candidates.data<float>() + row * S * 2;
        for (int attempt = 0;; ++attempt) {
          ASSERT_LT(attempt, 10000) << "could not separate candidate row " << row;
          const float* map = mask.data<float>() + (b * Q + q) * h * w;
          std::vector<double> u;
          for (int64_t k = 0; k < S; ++k) u.push_back(std::fabs(bilinear(map, h, w, cand + 2 * k)));
          std::sort(u.begin(), u.end());
          if (U == 0 || U == S || u[size_t(U)] - u[size_t(U - 1)] > 5 * kStep) break;
          for (int64_t k = 0; k < 2 * S; ++k) cand[k] = std::uniform_real_distribution<float>(0.f, 1.f)(test::rng());
        }
        ++row;
      }
  }

  // mask_losses on the check's cls / mask values, with this problem's labels and draws as constants.
  ValueId losses(Builder& b, ValueId cls_v, ValueId mask_v, const std::string& name) const {
    return model::mask_losses(b, cls_v, mask_v, b.constant(name + ".gt_seg", seg),
                              b.constant(name + ".candidates", candidates), b.constant(name + ".randoms", randoms),
                              cfg, name);
  }
};

TEST(GradLoss, MaskLossesBothGradients) {
  // Image 0 has classes 0 and 2 (and ignored pixels), image 1 only class 1.
  MaskProblem p(2, 3, 3, 4, 5, 7, 6, 8, {{0, 2, 255}, {1}});
  test::check_gradients("mask_losses", {{"cls", p.cls}, {"mask", p.mask}},
                        [&](Builder& b, const std::vector<ValueId>& in) { return p.losses(b, in[0], in[1], "loss"); },
                        {.step = kStep});
}

TEST(GradLoss, MaskLossesQueryCopiesFrozenClassifier) {
  // Q = 2K: queries c and c + 3 both learn class c's mask; the class scores are frozen.
  MaskProblem p(2, 6, 3, 4, 4, 6, 6, 4, {{0, 1, 2}, {2, 255}});
  test::check_gradients("mask_losses copies", {{"cls", p.cls, false}, {"mask", p.mask}},
                        [&](Builder& b, const std::vector<ValueId>& in) { return p.losses(b, in[0], in[1], "loss"); },
                        {.step = kStep});
}

TEST(GradLoss, MaskLossesFrozenMasksAndQueriesBeyondK) {
  // Q = 5 > K = 3: queries 3 and 4 are always "no object"; only the classifier learns.
  MaskProblem p(1, 5, 3, 3, 3, 5, 5, 4, {{0, 1}});
  test::check_gradients("mask_losses frozen masks", {{"cls", p.cls}, {"mask", p.mask, false}},
                        [&](Builder& b, const std::vector<ValueId>& in) { return p.losses(b, in[0], in[1], "loss"); },
                        {.step = kStep});
}

TEST(GradLoss, MaskLossesNoPositive) {
  // Everything ignored: loss_mask and loss_dice are 0 and the mask gradient is zero.
  MaskProblem p(2, 3, 3, 4, 4, 5, 5, 4, {{255}, {255}});
  test::check_gradients("mask_losses no positive", {{"cls", p.cls}, {"mask", p.mask}},
                        [&](Builder& b, const std::vector<ValueId>& in) { return p.losses(b, in[0], in[1], "loss"); },
                        {.step = kStep});
}

TEST(GradLoss, MaskLossesTwoDrawsOfOnePredictionSum) {
  // The same prediction in two losses with their own draws (a value used twice): the gradients add.
  MaskProblem p(1, 3, 3, 4, 4, 6, 6, 4, {{0, 1}});
  MaskProblem other = p;
  other.candidates = uniform(p.candidates.shape(), 0.f, 1.f);
  other.randoms = uniform(p.randoms.shape(), 0.f, 1.f);
  other.separate();
  test::check_gradients("mask_losses twice", {{"cls", p.cls}, {"mask", p.mask}},
                        [&](Builder& b, const std::vector<ValueId>& in) {
                          return b.add(p.losses(b, in[0], in[1], "first"), other.losses(b, in[0], in[1], "second"),
                                       "sum");
                        },
                        {.step = kStep});
}

Tensor labels(int64_t B, int64_t H, int64_t W, int64_t K) {
  Tensor seg = Tensor::empty({B, H, W}, DType::i64);
  for (int64_t i = 0; i < seg.numel(); ++i) {
    const uint64_t r = test::rng()() % uint64_t(K + 2);
    seg.data<int64_t>()[i] = r >= uint64_t(K) ? 255 : int64_t(r);  // about 2 in K + 2 ignored
  }
  return seg;
}

TEST(GradLoss, SegCrossEntropyAtLabelSize) {
  const Tensor seg = labels(2, 4, 5, 3);
  for (const float weight : {1.f, 0.7f})
    test::check_gradients("seg_cross_entropy", {{"logits", uniform({2, 3, 4, 5}, -3.f, 3.f)}},
                          [&](Builder& b, const std::vector<ValueId>& in) {
                            return model::seg_cross_entropy(b, in[0], b.constant("gt_seg", seg), weight, "aux");
                          });
}

TEST(GradLoss, SegCrossEntropyValueUsedTwice) {
  // The score map in the auxiliary loss and, scaled, in a second one: both contributions reach it.
  const Tensor seg = labels(1, 3, 4, 4);
  test::check_gradients("seg_cross_entropy twice", {{"logits", uniform({1, 4, 3, 4}, -3.f, 3.f)}},
                        [&](Builder& b, const std::vector<ValueId>& in) {
                          const ValueId gt = b.constant("gt_seg", seg);
                          return b.add(model::seg_cross_entropy(b, in[0], gt, 1.f, "aux"),
                                       model::seg_cross_entropy(b, in[0], gt, 0.4f, "aux2"), "sum");
                        });
}

// ---- the graph's values are the kernels' ----

TEST(GradLoss, GraphMaskLossesEqualKernelCalls) {
  MaskProblem p(2, 3, 3, 5, 4, 9, 7, 8, {{0, 1, 255}, {2}});
  test::TapedGraph taped;
  auto& [g, store, tape, b] = taped;
  const ValueId cls = g.weight("cls", p.cls), mask = g.weight("mask", p.mask);
  const ValueId losses = p.losses(b, cls, mask, "decode.loss");
  g.mark_output(losses);
  g.mark_output(g.at("decode.loss.1"));
  const Tensor seed = Tensor::from_vector(std::vector<float>{0.5f, -1.25f, 2.f}, Shape{3});
  model::build_backward(b, tape, {{losses, g.constant("seed", seed)}}, {cls, mask});
  graph::Executor ex(g, Device::cpu());
  ex.run();

  Tensor want_losses = Tensor::empty({3}, DType::f32);
  Tensor want_points = Tensor::empty(g.value(g.at("decode.loss.1")).shape, DType::f32);
  kernels::mask_loss(p.cls, p.mask, p.seg, p.candidates, p.randoms, p.cfg, want_losses, want_points);
  EXPECT_EQ(test::compare(ex.get("decode.loss"), want_losses).max_abs, 0.0);
  EXPECT_EQ(test::compare(ex.get("decode.loss.1"), want_points).max_abs, 0.0);
  EXPECT_GT(want_losses.data<float>()[1], 0.f);  // there are positives

  Tensor want_cls = Tensor::empty(p.cls.shape(), DType::f32), want_mask = Tensor::empty(p.mask.shape(), DType::f32);
  kernels::mask_loss_backward(p.cls, p.mask, p.seg, want_points, p.cfg, seed, want_cls, want_mask);
  EXPECT_EQ(test::compare(ex.get("grad.cls"), want_cls).max_abs, 0.0);
  EXPECT_EQ(test::compare(ex.get("grad.mask"), want_mask).max_abs, 0.0);
  EXPECT_GT(test::compare(want_mask, Tensor::zeros(want_mask.shape(), DType::f32)).max_abs, 0.0);
}

TEST(GradLoss, GraphSegCrossEntropyEqualsKernelCalls) {
  // 2 x 3 x 4 x 5 score map, labels 8 x 10: resized (Builder::resize_bilinear), then the mean over all pixels.
  const Tensor logits = uniform({2, 3, 4, 5}, -3.f, 3.f), seg = labels(2, 8, 10, 3);
  graph::Graph g;
  model::WeightStore store = model::WeightStore::synthesize(0);
  Builder b(g, store);
  const ValueId loss = model::seg_cross_entropy(b, g.weight("score_map", logits), b.constant("gt_seg", seg), 0.4f,
                                                "scr_map.loss_seg");
  g.mark_output(loss);
  EXPECT_EQ(g.value(loss).shape, Shape{1});
  EXPECT_NE(g.find("scr_map.loss_seg.resize"), graph::kNoValue);
  graph::Executor ex(g, Device::cpu());
  ex.run();

  Tensor resized = Tensor::empty({2, 3, 8, 10}, DType::f32), ce = Tensor::empty({}, DType::f32);
  kernels::resize_bilinear(logits, resized);
  kernels::cross_entropy(resized, seg, Tensor(), 255, kernels::CrossEntropyReduction::mean_all, ce);
  const float want = ce.data<float>()[0] * 0.4f;
  EXPECT_EQ(ex.get("scr_map.loss_seg").data<float>()[0], want);
}

// ---- build-time checks ----

TEST(GradLoss, BadArgumentsAreNamed) {
  MaskProblem p(1, 3, 3, 4, 4, 6, 6, 4, {{0}});
  graph::Graph g;
  model::WeightStore store = model::WeightStore::synthesize(0);
  Builder b(g, store);
  const ValueId cls = g.weight("cls", p.cls), mask = g.weight("mask", p.mask);
  const ValueId seg = b.constant("seg", p.seg), cand = b.constant("cand", p.candidates);
  const ValueId rnd = b.constant("rnd", p.randoms);
  const auto expect_error = [](const std::function<void()>& f, const std::string& fragment) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one mentioning '" << fragment << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  const ValueId seg_f32 = b.constant("seg_f32", uniform({1, 6, 6}));
  expect_error([&] { model::mask_losses(b, cls, mask, seg_f32, cand, rnd, p.cfg, "l1"); },
               "mask_losses 'l1': gt_seg 'seg_f32' must be I64 with 3 dims");
  MaskLossConfig more = p.cfg;
  more.num_points = 8;
  expect_error([&] { model::mask_losses(b, cls, mask, seg, cand, rnd, more, "l2"); }, "candidates [3, 12, 2]");
  MaskLossConfig k2 = p.cfg;
  k2.num_classes = 2;
  k2.class_weight = {1.f, 1.f, 0.1f};
  expect_error([&] { model::mask_losses(b, cls, mask, seg, cand, rnd, k2, "l3"); }, "do not fit");
  expect_error([&] { model::seg_cross_entropy(b, cls, seg, 1.f, "aux"); }, "seg_cross_entropy 'aux': logits 'cls'");
  expect_error([&] { model::seg_cross_entropy(b, mask, b.constant("seg2", labels(2, 6, 6, 3)), 1.f, "aux"); },
               "batch size");
}

}  // namespace
}  // namespace mfuser
