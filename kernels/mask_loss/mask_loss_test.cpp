// mask_loss: the decode-head loss of one prediction (forward losses, chosen points, both gradients) against
// the float64 PyTorch oracle (mfuser_ref.losses.layer_loss with replayed draws) at tiny shapes and the real
// MFuser shapes; tie-breaking of the point choice; argument checks; the CUDA kernels against the CPU reference
// (MaskLossCuda).
#include "kernels/mask_loss/mask_loss.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "tests/common/cuda_test.h"
#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

using kernels::MaskLossConfig;

// Same cases as mask_loss_golden.py; shapes and configs come from the file.
const char* const kCases[] = {"tiny.basic",       "tiny.copies",      "tiny.partial_uncertain",
                              "tiny.random_only", "tiny.no_positive", "real"};

// Losses: f32 results of f64 sums (cross_entropy, bce_dice) over f32 point samples: a few ulp (measured over
// 10 seeds: <= 2.4e-7 relative).
constexpr double kLossRel = 1e-5;

double largest(const Tensor& t) { return test::compare(t, Tensor::zeros(t.shape(), t.dtype())).max_abs; }

MaskLossConfig config_of(const SafetensorsReader& g, const std::string& c) {
  const float* v = g.view(c + ".config").data<float>();
  MaskLossConfig m;
  m.num_classes = int64_t(v[0]);
  m.num_points = int64_t(v[1]);
  m.oversample_ratio = v[2];
  m.importance_sample_ratio = v[3];
  m.loss_cls_weight = v[4];
  m.loss_mask_weight = v[5];
  m.loss_dice_weight = v[6];
  m.dice_eps = v[7];
  const Tensor w = g.view(c + ".class_weight");
  m.class_weight.assign(w.data<float>(), w.data<float>() + w.numel());
  return m;
}

class MaskLossTest : public ::testing::Test {
 protected:
  test::Golden golden_{"mask_loss"};
  const SafetensorsReader& g() const { return golden_.file; }
  Tensor in(const std::string& c, const char* what) const { return g().view(c + "." + what); }

  struct Forward {
    Tensor losses, points;
  };
  Forward forward(const std::string& c, const MaskLossConfig& cfg) const {
    const Tensor cls = in(c, "cls_scores");
    Forward f{Tensor::empty(Shape{3}, DType::f32),
              Tensor::empty(Shape{cls.dim(0) * cls.dim(1), cfg.num_points, 2}, DType::f32)};
    test::poison(f.losses);
    test::poison(f.points);
    kernels::cpu::mask_loss(cls, in(c, "mask_preds"), in(c, "gt_seg"), in(c, "candidates"), in(c, "randoms"), cfg,
                            f.losses, f.points);
    return f;
  }
};

TEST_F(MaskLossTest, LossesAndPointsMatchPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const std::string c : kCases) {
    SCOPED_TRACE(c);
    const MaskLossConfig cfg = config_of(g(), c);
    const Forward f = forward(c, cfg);
    const Tensor ref = in(c, "losses");
    const char* names[] = {"loss_cls", "loss_mask", "loss_dice"};
    for (int i = 0; i < 3; ++i) {
      const double got = f.losses.data<float>()[i], want = ref.data<float>()[i];
      std::printf("[ errors   ] %s %s: %.9g vs PyTorch %.9g (rel %.3g)\n", c.c_str(), names[i], got, want,
                  want != 0 ? std::fabs(got - want) / std::fabs(want) : std::fabs(got));
      if (want == 0)
        EXPECT_EQ(got, 0.0) << names[i];  // no positive: exactly zero
      else
        EXPECT_LE(std::fabs(got - want), kLossRel * std::fabs(want)) << names[i];
    }
    // The chosen points are copies of f32 candidates / randoms: exact, in the oracle's order; unused rows zero.
    const Tensor ref_points = in(c, "points");
    const int64_t used = ref_points.numel();
    ASSERT_LE(used, f.points.numel());
    EXPECT_EQ(std::memcmp(f.points.data<float>(), ref_points.data<float>(), size_t(used) * sizeof(float)), 0)
        << "chosen points differ from the oracle's";
    for (int64_t i = used; i < f.points.numel(); ++i) ASSERT_EQ(f.points.data<float>()[i], 0.f) << "unused row";
  }
}

TEST_F(MaskLossTest, GradientsMatchPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const std::string c : kCases) {
    SCOPED_TRACE(c);
    const MaskLossConfig cfg = config_of(g(), c);
    const Forward f = forward(c, cfg);
    const Tensor ref_cls = in(c, "grad_cls_scores"), ref_mask = in(c, "grad_mask_preds");
    Tensor grad_cls = Tensor::empty(ref_cls.shape(), DType::f32);
    Tensor grad_mask = Tensor::empty(ref_mask.shape(), DType::f32);
    test::poison(grad_cls);
    test::poison(grad_mask);
    kernels::cpu::mask_loss_backward(in(c, "cls_scores"), in(c, "mask_preds"), in(c, "gt_seg"), f.points, cfg,
                                     in(c, "grad_out"), grad_cls, grad_mask);
    // grad_cls: f64 softmax terms rounded once (plus the f32 upstream * loss weight): ~1 ulp of the largest.
    test::expect_close(grad_cls, ref_cls, c + " grad_cls_scores", 1e-6 * largest(ref_cls), kLossRel);
    // grad_mask: f32 point gradients scattered through f32 bilinear weights and summed in f32 per pixel
    // (point_sample_backward), where BCE and dice terms and several points may cancel. Measured over 10 seeds:
    // rel_l2 <= 1.1e-7, max_abs <= 1.6e-7 of the largest |grad| (4.7e-5 at the real shape).
    const double mask_scale = largest(ref_mask);
    std::printf("[ errors   ] %s largest |grad|: cls %.3g, mask %.3g\n", c.c_str(), largest(ref_cls), mask_scale);
    test::expect_close(grad_mask, ref_mask, c + " grad_mask_preds", 2e-6 * mask_scale + 1e-30, kLossRel);
    if (mask_scale == 0) {
      EXPECT_EQ(largest(grad_mask), 0.0);  // no positive: exactly zero
    }

    // One gradient at a time, with the other's inputs undefined: the same values.
    Tensor only_cls = Tensor::empty(ref_cls.shape(), DType::f32), none;
    test::poison(only_cls);
    kernels::cpu::mask_loss_backward(in(c, "cls_scores"), Tensor(), in(c, "gt_seg"), Tensor(), cfg, in(c, "grad_out"),
                                     only_cls, none);
    EXPECT_EQ(test::compare(only_cls, grad_cls).max_abs, 0.0);
    Tensor only_mask = Tensor::empty(ref_mask.shape(), DType::f32);
    test::poison(only_mask);
    kernels::cpu::mask_loss_backward(Tensor(), in(c, "mask_preds"), in(c, "gt_seg"), f.points, cfg, in(c, "grad_out"),
                                     none, only_mask);
    EXPECT_EQ(test::compare(only_mask, grad_mask).max_abs, 0.0);
  }
}

TEST_F(MaskLossTest, Dispatchers) {
  SCOPED_TRACE(golden_.seed_trace);
  const std::string c = "tiny.basic";
  const MaskLossConfig cfg = config_of(g(), c);
  const Forward ref = forward(c, cfg);
  Tensor losses = Tensor::empty(Shape{3}, DType::f32), points = Tensor::empty(ref.points.shape(), DType::f32);
  kernels::mask_loss(in(c, "cls_scores"), in(c, "mask_preds"), in(c, "gt_seg"), in(c, "candidates"), in(c, "randoms"),
                     cfg, losses, points);
  EXPECT_EQ(test::compare(losses, ref.losses).max_abs, 0.0);
  EXPECT_EQ(test::compare(points, ref.points).max_abs, 0.0);
  Tensor grad_cls = Tensor::empty(in(c, "cls_scores").shape(), DType::f32);
  Tensor grad_mask = Tensor::empty(in(c, "mask_preds").shape(), DType::f32);
  kernels::mask_loss_backward(in(c, "cls_scores"), in(c, "mask_preds"), in(c, "gt_seg"), points, cfg, in(c, "grad_out"),
                              grad_cls, grad_mask);
  test::expect_close(grad_cls, in(c, "grad_cls_scores"), "dispatch grad_cls_scores",
                     1e-6 * largest(in(c, "grad_cls_scores")));
  test::expect_close(grad_mask, in(c, "grad_mask_preds"), "dispatch grad_mask_preds",
                     1e-5 * largest(in(c, "grad_mask_preds")));
}

// A small self-made problem: B = 1, Q = K = 2, 4x4 logits, 6x6 labels, P = 4 (S = 12, U = 3, R = 1).
struct Small {
  MaskLossConfig cfg;
  Tensor cls = Tensor::zeros(Shape{1, 2, 3}, DType::f32);
  Tensor mask = Tensor::zeros(Shape{1, 2, 4, 4}, DType::f32);
  Tensor seg = Tensor::zeros(Shape{1, 6, 6}, DType::i64);
  Tensor candidates = Tensor::empty(Shape{2, 12, 2}, DType::f32);
  Tensor randoms = Tensor::empty(Shape{2, 1, 2}, DType::f32);
  Tensor losses = Tensor::empty(Shape{3}, DType::f32);
  Tensor points = Tensor::empty(Shape{2, 4, 2}, DType::f32);
  Small() {
    cfg.num_classes = 2;
    cfg.class_weight = {1.f, 1.f, 0.1f};
    cfg.num_points = 4;
    test::fill_uniform(candidates, 0.25f, 0.75f);
    test::fill_uniform(randoms, 0.f, 1.f);
    test::fill_uniform(cls);
  }
  void run() { kernels::cpu::mask_loss(cls, mask, seg, candidates, randoms, cfg, losses, points); }
};

TEST(MaskLoss, EqualUncertaintyPicksSmallerCandidateIndexFirst) {
  MFUSER_SEED_TRACE();
  // Logits 0 everywhere: every interior candidate samples exactly 0, all tie. Only class 0 is present, so the
  // one positive (query 0) takes candidates 0, 1, 2 of row 0, then randoms row 0.
  Small s;
  s.run();
  const float* p = s.points.data<float>();
  for (int k = 0; k < 3; ++k) {
    EXPECT_EQ(p[2 * k], s.candidates.data<float>()[2 * k]);
    EXPECT_EQ(p[2 * k + 1], s.candidates.data<float>()[2 * k + 1]);
  }
  EXPECT_EQ(p[6], s.randoms.data<float>()[0]);
  EXPECT_EQ(p[7], s.randoms.data<float>()[1]);
  for (int i = 8; i < 16; ++i) EXPECT_EQ(p[i], 0.f);  // query 1 (class 1 absent) is no positive
}

TEST(MaskLoss, SmallestUncertaintyFirst) {
  MFUSER_SEED_TRACE();
  // A ramp along x: |logit| grows with |x - 0.5|; the chosen candidates come in increasing |logit|.
  Small s;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) s.mask.data<float>()[i * 4 + j] = float(j) - 1.5f;
  s.run();
  const float* p = s.points.data<float>();
  const auto logit = [](float x) { return std::fabs(double(x) * 4 - 0.5 - 1.5); };  // interior: linear in x
  std::vector<double> all;
  for (int i = 0; i < 12; ++i) all.push_back(logit(s.candidates.data<float>()[2 * i]));
  std::sort(all.begin(), all.end());
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(logit(p[2 * k]), all[size_t(k)], 1e-12) << k;
}

void expect_error(const std::function<void()>& call, const std::string& fragment) {
  try {
    call();
    ADD_FAILURE() << "no error; expected one mentioning '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(MaskLoss, RejectsBadArguments) {
  Small s;
  const auto fwd = [&](Small& t) { return [&t] { t.run(); }; };
  {
    Small t;
    t.seg.data<int64_t>()[7] = 2;  // a class >= K
    expect_error(fwd(t), "gt_seg value 2");
    t.seg.data<int64_t>()[7] = -1;
    expect_error(fwd(t), "gt_seg value -1");
    t.seg.data<int64_t>()[7] = 254;
    expect_error(fwd(t), "nor ignore_index 255");
  }
  {
    Small t;
    t.cls = Tensor::zeros(Shape{1, 2, 4}, DType::f32);  // K + 1 != 3
    expect_error(fwd(t), "num_classes + 1 = 3");
  }
  {
    Small t;
    t.mask = Tensor::zeros(Shape{1, 3, 4, 4}, DType::f32);
    expect_error(fwd(t), "differ in [B, Q]");
  }
  {
    Small t;
    t.cls = Tensor::zeros(Shape{1, 1, 3}, DType::f32);
    t.mask = Tensor::zeros(Shape{1, 1, 4, 4}, DType::f32);
    expect_error(fwd(t), "needs Q >= num_classes");
  }
  {
    Small t;
    t.seg = Tensor::zeros(Shape{2, 6, 6}, DType::i64);
    expect_error(fwd(t), "gt_seg");
    t.seg = Tensor::zeros(Shape{1, 6, 6}, DType::f32);
    expect_error(fwd(t), "gt_seg must be i64");
  }
  {
    Small t;
    t.candidates = Tensor::zeros(Shape{2, 11, 2}, DType::f32);
    expect_error(fwd(t), "candidates must have shape [2, 12, 2]");
    t.candidates = Tensor::zeros(Shape{1, 12, 2}, DType::f32);  // one row per (image, query), not per positive
    expect_error(fwd(t), "candidates must have shape [2, 12, 2]");
  }
  {
    Small t;
    t.randoms = Tensor::zeros(Shape{2, 2, 2}, DType::f32);
    expect_error(fwd(t), "randoms must have shape [2, 1, 2]");
  }
  {
    Small t;
    t.points = Tensor::zeros(Shape{2, 5, 2}, DType::f32);
    expect_error(fwd(t), "points must have shape");
    t.points = Tensor::zeros(Shape{2, 4, 2}, DType::f32);
    t.losses = Tensor::zeros(Shape{1}, DType::f32);
    expect_error(fwd(t), "losses must have shape [3]");
  }
  {
    Small t;
    t.cfg.class_weight = {1.f, 1.f};
    expect_error(fwd(t), "class_weight must have num_classes + 1 = 3 entries");
  }
  {
    Small t;
    t.cfg.oversample_ratio = 0.5;
    expect_error(fwd(t), "oversample_ratio");
    t.cfg.oversample_ratio = 3;
    t.cfg.importance_sample_ratio = 1.5;
    expect_error(fwd(t), "importance_sample_ratio");
    t.cfg.importance_sample_ratio = 0.75;
    t.cfg.num_points = 0;
    expect_error(fwd(t), "num_points");
  }
  // Nothing written when a label is bad.
  {
    Small t;
    t.seg.data<int64_t>()[0] = 7;
    test::poison(t.losses);
    EXPECT_THROW(t.run(), Error);
    EXPECT_TRUE(std::isnan(t.losses.data<float>()[0]));
  }

  // Backward.
  s.run();
  const Tensor g = Tensor::from_vector(std::vector<float>{1.f, 1.f, 1.f}, Shape{3});
  Tensor grad_cls = Tensor::empty(s.cls.shape(), DType::f32), grad_mask = Tensor::empty(s.mask.shape(), DType::f32);
  const auto bwd = [&](const Tensor& cls, const Tensor& mask, const Tensor& points, const Tensor& grad, Tensor& gc,
                       Tensor& gm) {
    return [&, cls, mask, points, grad] {
      kernels::cpu::mask_loss_backward(cls, mask, s.seg, points, s.cfg, grad, gc, gm);
    };
  };
  expect_error(bwd(s.cls, s.mask, s.points, Tensor::zeros(Shape{}, DType::f32), grad_cls, grad_mask),
               "grad_losses must have shape [3]");
  expect_error(bwd(s.cls, s.mask, Tensor::zeros(Shape{2, 3, 2}, DType::f32), g, grad_cls, grad_mask),
               "points must have shape");
  expect_error(bwd(s.cls, s.mask, Tensor(), g, grad_cls, grad_mask), "mask_preds or points is undefined");
  expect_error(bwd(Tensor(), s.mask, s.points, g, grad_cls, grad_mask), "cls_scores is undefined");
  Tensor bad = Tensor::empty(Shape{1, 2, 4, 5}, DType::f32);
  expect_error(bwd(s.cls, s.mask, s.points, g, grad_cls, bad), "grad_mask_preds must have shape");
  Tensor alias = s.mask;
  expect_error(bwd(s.cls, s.mask, s.points, g, grad_cls, alias), "grad_mask_preds may not alias");
  Tensor alias_cls = s.cls;
  expect_error(bwd(s.cls, s.mask, s.points, g, alias_cls, grad_mask), "grad_cls_scores may not alias");
}

// ---- CUDA vs the CPU reference ----

struct CudaCase {
  const char* name;
  int64_t batch, queries, classes, h, w, height, width;
  int64_t num_points;
  double oversample, importance;
  int64_t present;   // classes drawn per image (0: every pixel ignored, no positive)
  bool zero_logits;  // every candidate's |m| ties at 0: the choice is by candidate index alone
};

// A random problem: labels in 4x4-pixel cells of `present` classes per image, 10% of the cells ignored.
struct Problem {
  MaskLossConfig cfg;
  Tensor cls, mask, seg, candidates, randoms, grad_losses;
};

Problem random_problem(const CudaCase& c) {
  Problem p;
  p.cfg.num_classes = c.classes;
  p.cfg.class_weight.clear();
  for (int64_t k = 0; k < c.classes; ++k)
    p.cfg.class_weight.push_back(std::uniform_real_distribution<float>(0.5f, 2.f)(test::rng()));
  p.cfg.class_weight.push_back(0.1f);
  p.cfg.num_points = c.num_points;
  p.cfg.oversample_ratio = c.oversample;
  p.cfg.importance_sample_ratio = c.importance;
  const int64_t rows = c.batch * c.queries;
  p.cls = test::random_host({c.batch, c.queries, c.classes + 1}, DType::f32, -3.f, 3.f);
  p.mask = c.zero_logits ? Tensor::zeros({c.batch, c.queries, c.h, c.w}, DType::f32)
                         : test::random_host({c.batch, c.queries, c.h, c.w}, DType::f32, -4.f, 4.f);
  p.candidates = test::random_host({rows, p.cfg.num_candidates(), 2}, DType::f32, 0.f, 1.f);
  p.randoms = test::random_host({rows, p.cfg.num_random(), 2}, DType::f32, 0.f, 1.f);
  p.grad_losses = test::random_host({3}, DType::f32, 0.5f, 2.f);
  p.seg = Tensor::empty({c.batch, c.height, c.width}, DType::i64);
  std::vector<int64_t> classes(size_t(c.classes));
  std::iota(classes.begin(), classes.end(), int64_t(0));
  const int64_t cells_x = (c.width + 3) / 4;
  std::bernoulli_distribution ignored(0.1);
  for (int64_t b = 0; b < c.batch; ++b) {
    std::shuffle(classes.begin(), classes.end(), test::rng());
    std::vector<int64_t> cell_label(size_t(cells_x * ((c.height + 3) / 4)));
    for (int64_t& l : cell_label)
      l = c.present == 0 || ignored(test::rng())
              ? p.cfg.ignore_index
              : classes[size_t(std::uniform_int_distribution<int64_t>(0, c.present - 1)(test::rng()))];
    for (int64_t i = 0; i < c.height; ++i)
      for (int64_t j = 0; j < c.width; ++j)
        p.seg.data<int64_t>()[(b * c.height + i) * c.width + j] = cell_label[size_t(i / 4 * cells_x + j / 4)];
  }
  return p;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// CUDA result vs CPU reference; an exactly zero reference (no positive) must be exactly zero.
void expect_matches(const Tensor& out, const Tensor& ref, const std::string& what) {
  if (largest(ref) == 0) {
    EXPECT_EQ(largest(out), 0.0) << what << " must be exactly zero (seed " << test::seed() << ")";
    return;
  }
  test::expect_cuda_close(out, ref, what);
}

// Forward (losses, points) and backward (both gradients, and each alone) on CUDA, outputs poisoned, run twice
// (bitwise equal), against the CPU reference. The chosen points must equal the CPU's exactly: |m| is
// bit-identical on both sides, and so is the order.
void expect_mask_loss_matches_cpu(const CudaCase& c) {
  SCOPED_TRACE(c.name);
  const std::string name = c.name;
  const Problem p = random_problem(c);
  const int64_t rows = c.batch * c.queries;
  const Shape points_shape{rows, c.num_points, 2};
  Tensor losses_ref = Tensor::empty({3}, DType::f32), points_ref = Tensor::empty(points_shape, DType::f32);
  kernels::cpu::mask_loss(p.cls, p.mask, p.seg, p.candidates, p.randoms, p.cfg, losses_ref, points_ref);
  Tensor grad_cls_ref = Tensor::empty(p.cls.shape(), DType::f32),
         grad_mask_ref = Tensor::empty(p.mask.shape(), DType::f32);
  kernels::cpu::mask_loss_backward(p.cls, p.mask, p.seg, points_ref, p.cfg, p.grad_losses, grad_cls_ref, grad_mask_ref);

  const auto cuda = [](const Tensor& t) { return t.to(Device::cuda()); };
  const Tensor cls = cuda(p.cls), mask = cuda(p.mask), seg = cuda(p.seg), grad_losses = cuda(p.grad_losses);
  const Tensor candidates = cuda(p.candidates), randoms = cuda(p.randoms);
  struct Run {
    Tensor losses, points, grad_cls, grad_mask;
  } runs[2];
  for (Run& r : runs) {
    Tensor losses = test::poisoned_cuda({3}, DType::f32), points = test::poisoned_cuda(points_shape, DType::f32);
    kernels::mask_loss(cls, mask, seg, candidates, randoms, p.cfg, losses, points);
    Tensor grad_cls = test::poisoned_cuda(p.cls.shape(), DType::f32);
    Tensor grad_mask = test::poisoned_cuda(p.mask.shape(), DType::f32);
    kernels::mask_loss_backward(cls, mask, seg, points, p.cfg, grad_losses, grad_cls, grad_mask);
    r = {losses.to(Device::cpu()), points.to(Device::cpu()), grad_cls.to(Device::cpu()), grad_mask.to(Device::cpu())};
  }
  const Run& r = runs[0];
  const char* names[] = {"loss_cls", "loss_mask", "loss_dice"};
  for (int64_t k = 0; k < 3; ++k)
    expect_matches(r.losses.slice_rows(k, k + 1), losses_ref.slice_rows(k, k + 1), name + " " + names[k]);
  EXPECT_TRUE(bitwise_equal(r.points, points_ref)) << name << ": the chosen points differ from the CPU's";
  expect_matches(r.grad_cls, grad_cls_ref, name + " grad_cls_scores");
  expect_matches(r.grad_mask, grad_mask_ref, name + " grad_mask_preds");
  EXPECT_TRUE(bitwise_equal(r.losses, runs[1].losses) && bitwise_equal(r.points, runs[1].points) &&
              bitwise_equal(r.grad_cls, runs[1].grad_cls) && bitwise_equal(r.grad_mask, runs[1].grad_mask))
      << name << ": two runs differ";

  // One gradient at a time, the other's inputs undefined: the same bits.
  const Tensor points = cuda(r.points);
  Tensor only_cls = test::poisoned_cuda(p.cls.shape(), DType::f32), none;
  kernels::mask_loss_backward(cls, Tensor(), seg, Tensor(), p.cfg, grad_losses, only_cls, none);
  EXPECT_TRUE(bitwise_equal(only_cls.to(Device::cpu()), r.grad_cls)) << name << ": grad_cls_scores alone";
  Tensor only_mask = test::poisoned_cuda(p.mask.shape(), DType::f32);
  kernels::mask_loss_backward(Tensor(), mask, seg, points, p.cfg, grad_losses, none, only_mask);
  EXPECT_TRUE(bitwise_equal(only_mask.to(Device::cpu()), r.grad_mask)) << name << ": grad_mask_preds alone";
}

TEST(MaskLossCuda, MatchesCpuAtTinyShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase cases[] = {{"tiny.basic", 2, 3, 3, 5, 6, 12, 10, 20, 3.0, 0.75, 2, false},
                            {"tiny.copies", 2, 6, 3, 4, 4, 9, 9, 10, 2.5, 0.75, 2, false},
                            {"tiny.partial_queries", 1, 5, 4, 3, 4, 7, 5, 8, 2.0, 0.5, 3, false},
                            {"tiny.random_only", 2, 3, 3, 4, 5, 8, 8, 12, 3.0, 0.0, 2, false},
                            {"tiny.uncertain_only", 2, 3, 3, 4, 5, 8, 8, 12, 3.0, 1.0, 3, false},
                            {"tiny.no_positive", 2, 3, 3, 4, 4, 8, 8, 20, 3.0, 0.75, 0, false},
                            {"tiny.ties", 2, 3, 3, 4, 4, 8, 8, 20, 3.0, 0.75, 2, true}};
  for (const CudaCase& c : cases) expect_mask_loss_matches_cpu(c);
}

// One decoder prediction of the real config: 2 images, 19 queries and classes, 128x128 mask logits, 512x512
// labels, 12544 points from 37632 candidates (rows far larger than a block's shared memory).
TEST(MaskLossCuda, MatchesCpuAtModelShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  expect_mask_loss_matches_cpu({"real", 2, 19, 19, 128, 128, 512, 512, 12544, 3.0, 0.75, 12, false});
}

// A label that is neither a class nor ignore_index cannot throw on the device: every loss is NaN.
TEST(MaskLossCuda, BadLabelMakesTheLossesNaN) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase c{"bad", 1, 3, 3, 4, 4, 8, 8, 8, 2.0, 0.5, 2, false};
  Problem p = random_problem(c);
  p.seg.data<int64_t>()[5] = c.classes;
  Tensor losses = test::poisoned_cuda({3}, DType::f32), points = test::poisoned_cuda({3, 8, 2}, DType::f32);
  kernels::mask_loss(p.cls.to(Device::cuda()), p.mask.to(Device::cuda()), p.seg.to(Device::cuda()),
                     p.candidates.to(Device::cuda()), p.randoms.to(Device::cuda()), p.cfg, losses, points);
  const Tensor host = losses.to(Device::cpu());
  for (int k = 0; k < 3; ++k) EXPECT_TRUE(std::isnan(host.data<float>()[k])) << "loss " << k;
}

}  // namespace
}  // namespace mfuser
