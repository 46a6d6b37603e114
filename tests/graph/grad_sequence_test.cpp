// Backward rules of the sequence-model ops (graph/model/grad_rules_sequence.cpp): dwconv1d, selective_scan and
// msdeform_attn against central differences, with every input wanted or frozen, the optional inputs present or
// absent, and values used more than once (MVFuser's dt_proj bias, which is also the scan's delta_bias).
#include <gtest/gtest.h>

#include <array>
#include <random>

#include "graph/model/grad_rules.h"
#include "tests/graph/grad_check.h"

namespace mfuser {
namespace {

using graph::kNoValue;
using graph::ValueId;
using model::Builder;
using test::GradInput;
using test::uniform;

// ---- dwconv1d ----

// The forward of the dwconv1d tests: the inputs are named after Builder::dwconv1d's parameters ("conv.weight",
// "conv.bias"), so the Builder picks them up as its weight and bias.
test::GradForward conv(int kernel, bool has_bias) {
  return [=](Builder& b, const std::vector<ValueId>& in) { return b.dwconv1d(in[0], "conv", kernel, has_bias); };
}

TEST(GradSequence, Dwconv1dAsMVFuser) {
  // K = 3, no bias: MVFuser's conv1d_x / conv1d_z.
  test::check_gradients("dwconv1d k3", {{"x", uniform({2, 6, 3})}, {"conv.weight", uniform({3, 1, 3})}},
                        conv(3, false));
}

TEST(GradSequence, Dwconv1dEvenKernelWithBias) {
  // Even K pads one more zero on the right than on the left.
  test::check_gradients("dwconv1d k4 bias",
                        {{"x", uniform({2, 5, 3})}, {"conv.weight", uniform({3, 1, 4})}, {"conv.bias", uniform({3})}},
                        conv(4, true));
}

TEST(GradSequence, Dwconv1dKernelLongerThanSequence) {
  test::check_gradients("dwconv1d k5 L3",
                        {{"x", uniform({1, 3, 2})}, {"conv.weight", uniform({2, 1, 5})}, {"conv.bias", uniform({2})}},
                        conv(5, true));
}

TEST(GradSequence, Dwconv1dFrozenInputs) {
  // Frozen weight: x is not read by the backward (grad_out stands in for its shape).
  test::check_gradients(
      "dwconv1d frozen weight",
      {{"x", uniform({2, 5, 3})}, {"conv.weight", uniform({3, 1, 3}), false}, {"conv.bias", uniform({3})}},
      conv(3, true));
  // Only the bias: the stand-in x's weight sums are computed and discarded.
  test::check_gradients(
      "dwconv1d bias only",
      {{"x", uniform({2, 5, 3}), false}, {"conv.weight", uniform({3, 1, 3}), false}, {"conv.bias", uniform({3})}},
      conv(3, true));
  // Frozen x (e.g. the output of a frozen layer): weight and bias only.
  test::check_gradients(
      "dwconv1d frozen x",
      {{"x", uniform({2, 5, 3}), false}, {"conv.weight", uniform({3, 1, 3})}, {"conv.bias", uniform({3})}},
      conv(3, true));
  // Only x: the weight is frozen and there is no bias.
  test::check_gradients("dwconv1d x only", {{"x", uniform({2, 5, 3})}, {"conv.weight", uniform({3, 1, 3}), false}},
                        conv(3, false));
}

TEST(GradSequence, Dwconv1dInputUsedTwice) {
  // y = conv_a(x) + conv_b(x) + x: x reaches the output three times.
  test::check_gradients("dwconv1d residual",
                        {{"x", uniform({2, 4, 3})}, {"a.weight", uniform({3, 1, 3})}, {"b.weight", uniform({3, 1, 2})},
                         {"b.bias", uniform({3})}},
                        [](Builder& b, const std::vector<ValueId>& in) {
                          const ValueId two = b.add(b.dwconv1d(in[0], "a", 3, false), b.dwconv1d(in[0], "b", 2, true),
                                                    "two");
                          return b.add(two, in[0], "y");
                        });
}

// ---- selective_scan ----

// Bt = 2 sequences of L = 5 steps, 3 channels, N = 4 states; A negative (as -exp(A_log)).
constexpr int64_t kBt = 2, kCh = 3, kLen = 5, kN = 4;

std::vector<GradInput> scan_inputs(bool with_d, bool with_bias) {
  std::vector<GradInput> in = {{"u", uniform({kBt, kCh, kLen})},
                               {"delta", uniform({kBt, kCh, kLen})},
                               {"A", uniform({kCh, kN}, -1.5f, -0.2f)},
                               {"B", uniform({kBt, kN, kLen})},
                               {"C", uniform({kBt, kN, kLen})}};
  if (with_d) in.push_back({"D", uniform({kCh})});
  if (with_bias) in.push_back({"delta_bias", uniform({kCh}, -0.5f, 0.5f)});
  return in;
}

test::GradForward scan(bool with_d, bool with_bias) {
  return [=](Builder& b, const std::vector<ValueId>& in) {
    const ValueId d = with_d ? in[5] : kNoValue;
    const ValueId bias = with_bias ? in[with_d ? 6 : 5] : kNoValue;
    return b.selective_scan(in[0], in[1], in[2], in[3], in[4], d, bias, "scan");
  };
}

TEST(GradSequence, SelectiveScanAllInputs) {
  test::check_gradients("scan", scan_inputs(true, true), scan(true, true));
}

TEST(GradSequence, SelectiveScanWithoutOptionalInputs) {
  test::check_gradients("scan no D no bias", scan_inputs(false, false), scan(false, false));
  test::check_gradients("scan D only", scan_inputs(true, false), scan(true, false));
  test::check_gradients("scan bias only", scan_inputs(false, true), scan(false, true));
}

TEST(GradSequence, SelectiveScanFrozenInputs) {
  // The kernel computes every gradient; only the wanted ones may reach the graph's gradients.
  auto in = scan_inputs(true, true);
  for (int k : {0, 1, 3, 4}) in[size_t(k)].wants_grad = false;  // wanted: A, D, delta_bias
  test::check_gradients("scan parameters only", in, scan(true, true));
  in = scan_inputs(true, true);
  for (int k : {2, 5, 6}) in[size_t(k)].wants_grad = false;  // wanted: u, delta, B, C (the parameters frozen)
  test::check_gradients("scan activations only", in, scan(true, true));
  in = scan_inputs(true, true);
  for (int k : {0, 1, 2, 3, 5, 6}) in[size_t(k)].wants_grad = false;  // wanted: C alone
  test::check_gradients("scan C only", in, scan(true, true));
}

TEST(GradSequence, SelectiveScanConstantA) {
  // MVFuser as built for inference: A = -exp(A_log) is a build-time constant, never wanting a gradient.
  auto in = scan_inputs(true, true);
  in.erase(in.begin() + 2);  // u, delta, B, C, D, delta_bias
  const Tensor a = uniform({kCh, kN}, -1.5f, -0.2f);
  test::check_gradients("scan constant A", in, [a](Builder& b, const std::vector<ValueId>& v) {
    return b.selective_scan(v[0], v[1], b.constant("A", a), v[2], v[3], v[4], v[5], "scan");
  });
}

TEST(GradSequence, SelectiveScanDtProjBiasUsedTwice) {
  // MVFuser: delta = dt_proj(x) with dt_proj's bias, and the scan adds the same bias again as delta_bias.
  // The permute to the scan's [Bt, D, L] layout is replaced by a reshape here (permute's rule lives elsewhere):
  // it scrambles which channel each delta entry belongs to, which does not matter for the sum over uses.
  test::check_gradients("scan dt_proj bias via linear",
                        {{"x", uniform({kBt, kLen, 2})},
                         {"dt_proj.weight", uniform({kCh, 2})},
                         {"dt_proj.bias", uniform({kCh}, -0.5f, 0.5f)},
                         {"u", uniform({kBt, kCh, kLen})},
                         {"A", uniform({kCh, kN}, -1.5f, -0.2f)},
                         {"B", uniform({kBt, kN, kLen})},
                         {"C", uniform({kBt, kN, kLen})},
                         {"D", uniform({kCh})}},
                        [](Builder& b, const std::vector<ValueId>& in) {
                          const ValueId delta = b.linear(in[0], in[1], in[2], "dt_proj");
                          const ValueId delta_t = b.reshape(delta, {kBt, kCh, kLen}, "delta_t");
                          return b.selective_scan(in[3], delta_t, in[4], in[5], in[6], in[7], in[2], "scan");
                        });
  // The same with the bias added channel-aligned (broadcast [D, 1] over time), as MVFuser's layout has it.
  test::check_gradients("scan dt_proj bias via add",
                        {{"delta", uniform({kBt, kCh, kLen})},
                         {"dt_proj.bias", uniform({kCh}, -0.5f, 0.5f)},
                         {"u", uniform({kBt, kCh, kLen})},
                         {"A", uniform({kCh, kN}, -1.5f, -0.2f)},
                         {"B", uniform({kBt, kN, kLen})},
                         {"C", uniform({kBt, kN, kLen})}},
                        [](Builder& b, const std::vector<ValueId>& in) {
                          const ValueId column = b.reshape(in[1], {kCh, 1}, "bias_column");
                          const ValueId delta = b.add(in[0], column, "delta_plus_bias");
                          return b.selective_scan(in[2], delta, in[3], in[4], in[5], kNoValue, in[1], "scan");
                        });
}

// ---- msdeform_attn ----

// Two levels (3x4 and 2x3: S = 18), Bt = 2, Q = 3 queries, H = 2 heads of Dh = 3, P = 2 points.
const std::vector<std::array<int64_t, 2>> kLevels = {{3, 4}, {2, 3}};
constexpr int64_t kB = 2, kS = 18, kQ = 3, kH = 2, kDh = 3, kL = 2, kP = 2;

// Normalized sampling locations [Bt, Q, H, L, P, 2] whose pixel coordinates (loc * n - 0.5) lie at least 0.15
// from every integer, so a central difference (step 1e-2 in loc, at most 0.04 pixels here) never crosses a
// bilinear kink. Cells -2 and n put some samples wholly or partly outside the map (zero padding).
Tensor sampling_locations() {
  Tensor t = Tensor::empty({kB, kQ, kH, kL, kP, 2}, DType::f32);
  float* p = t.data<float>();
  std::uniform_real_distribution<double> frac(0.15, 0.85);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const auto& hw = kLevels[size_t(i / (2 * kP) % kL)];
    const int64_t n = i % 2 == 0 ? hw[1] : hw[0];  // x runs along the width, y along the height
    std::uniform_int_distribution<int64_t> cell(-2, n);
    const double pixel = double(cell(test::rng())) + frac(test::rng());
    p[i] = float((pixel + 0.5) / double(n));
  }
  return t;
}

std::vector<GradInput> deform_inputs() {
  return {{"value", uniform({kB, kS, kH, kDh})},
          {"locations", sampling_locations()},
          {"weights", uniform({kB, kQ, kH, kL, kP}, 0.f, 1.f)}};
}

ValueId deform(Builder& b, const std::vector<ValueId>& in) {
  return b.msdeform_attn(in[0], kLevels, in[1], in[2], "attn");
}

TEST(GradSequence, MsdeformAttnAllInputs) { test::check_gradients("msdeform", deform_inputs(), deform); }

TEST(GradSequence, MsdeformAttnFrozenInputs) {
  auto in = deform_inputs();
  in[0].wants_grad = false;  // a frozen value projection: locations and weights only
  test::check_gradients("msdeform frozen value", in, deform);
  in = deform_inputs();
  in[1].wants_grad = in[2].wants_grad = false;  // value only
  test::check_gradients("msdeform value only", in, deform);
  in = deform_inputs();
  in[0].wants_grad = in[2].wants_grad = false;  // locations only
  test::check_gradients("msdeform locations only", in, deform);
}

TEST(GradSequence, MsdeformAttnValueAndWeightsUsedTwice) {
  // Two samplings of the same value with the same attention weights, at two sets of locations.
  auto in = deform_inputs();
  in.push_back({"locations2", sampling_locations()});
  test::check_gradients("msdeform twice", in, [](Builder& b, const std::vector<ValueId>& v) {
    const ValueId first = b.msdeform_attn(v[0], kLevels, v[1], v[2], "attn1");
    return b.add(first, b.msdeform_attn(v[0], kLevels, v[3], v[2], "attn2"), "y");
  });
}

}  // namespace
}  // namespace mfuser
