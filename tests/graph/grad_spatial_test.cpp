// The backward rules of convolution, resampling and layout ops (graph/model/grad_rules_spatial.cpp): gradients
// of small graphs against central differences, frozen inputs, strides / padding / bias options, unused split
// parts, values used more than once.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "graph/model/grad_rules.h"
#include "tests/graph/grad_check.h"

namespace mfuser {
namespace {

using graph::kNoValue;
using graph::ValueId;
using model::Builder;
using test::GradInput;
using test::uniform;
using Ids = std::vector<ValueId>;

// The Builder's conv ops fetch prefix.weight / prefix.bias through param(), which returns the graph value of
// that name when there is one: the checker's inputs named "conv.weight" / "conv.bias" are what they use.

// ---- conv2d ----

struct ConvCase {
  const char* what;
  int64_t in_ch, out_ch, h, w;
  int kernel, stride, padding;
  bool has_bias, want_x, want_w, want_b;
};

void check_conv2d(const ConvCase& k) {
  std::vector<GradInput> inputs = {{"x", uniform({2, k.in_ch, k.h, k.w}), k.want_x},
                                   {"conv.weight", uniform({k.out_ch, k.in_ch, k.kernel, k.kernel}), k.want_w}};
  if (k.has_bias) inputs.push_back({"conv.bias", uniform({k.out_ch}), k.want_b});
  test::check_gradients(k.what, inputs, [&](Builder& b, const Ids& in) {
    return b.conv2d(in[0], "conv", k.out_ch, k.kernel, k.stride, k.padding, k.has_bias);
  });
}

TEST(GradSpatial, Conv2dAllGradients) {
  check_conv2d({"conv2d k3 s1 p1", 3, 4, 5, 6, 3, 1, 1, true, true, true, true});
}

TEST(GradSpatial, Conv2dStridePadding) {
  // Stride 2 with padding 1 on odd and even sizes, and an unpadded strided conv whose last row and column
  // fit no window (they must get zero input gradient).
  check_conv2d({"conv2d k3 s2 p1", 2, 3, 7, 6, 3, 2, 1, true, true, true, true});
  check_conv2d({"conv2d k2 s2 p0 (dropped edge)", 2, 3, 5, 7, 2, 2, 0, true, true, true, true});
  check_conv2d({"conv2d k3 s1 p2", 2, 2, 4, 4, 3, 1, 2, false, true, true, false});
}

TEST(GradSpatial, Conv2dPointwise) {
  // The CPU kernel's direct 1x1 GEMM path.
  check_conv2d({"conv2d 1x1", 4, 3, 3, 5, 1, 1, 0, true, true, true, true});
}

TEST(GradSpatial, Conv2dFrozenInputs) {
  check_conv2d({"conv2d frozen weight and bias", 3, 4, 5, 5, 3, 1, 1, true, true, false, false});
  check_conv2d({"conv2d frozen x (patch embedding)", 3, 4, 8, 8, 4, 4, 0, true, false, true, true});
  check_conv2d({"conv2d only bias", 3, 4, 5, 5, 3, 2, 1, true, false, false, true});
  check_conv2d({"conv2d only weight, no bias", 3, 4, 5, 5, 3, 1, 0, false, false, true, false});
}

TEST(GradSpatial, Conv2dResidualUsesXTwice) {
  // y = conv(x) + x: x reaches the output through the conv and directly.
  test::check_gradients("conv2d residual",
                        {{"x", uniform({1, 3, 5, 4})}, {"conv.weight", uniform({3, 3, 3, 3})},
                         {"conv.bias", uniform({3})}},
                        [](Builder& b, const Ids& in) {
                          return b.add(b.conv2d(in[0], "conv", 3, 3, 1, 1, true), in[0], "y");
                        });
}

// ---- conv_transpose2d ----

void check_conv_transpose2d(const char* what, bool has_bias, bool want_x, bool want_w, bool want_b) {
  std::vector<GradInput> inputs = {{"x", uniform({2, 3, 3, 4}), want_x},
                                   {"conv.weight", uniform({3, 5, 2, 2}), want_w}};
  if (has_bias) inputs.push_back({"conv.bias", uniform({5}), want_b});
  test::check_gradients(what, inputs, [&](Builder& b, const Ids& in) {
    return b.conv_transpose2d(in[0], "conv", 5, has_bias);
  });
}

TEST(GradSpatial, ConvTranspose2d) {
  check_conv_transpose2d("conv_transpose2d all", true, true, true, true);
  check_conv_transpose2d("conv_transpose2d no bias", false, true, true, false);
  check_conv_transpose2d("conv_transpose2d frozen weight and bias", true, true, false, false);
  check_conv_transpose2d("conv_transpose2d frozen x", true, false, true, true);
  check_conv_transpose2d("conv_transpose2d only bias", true, false, false, true);
}

// ---- maxpool2d ----

// Distinct values at least 0.1 apart in random order: no window's argmax changes under the checker's 1e-2
// steps, so the max is differentiable at every probe.
Tensor tie_free(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::f32);
  std::vector<int64_t> order(size_t(t.numel()));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), test::rng());
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = 0.1f * float(order[size_t(i)]) - 3.f;
  return t;
}

TEST(GradSpatial, Maxpool2d) {
  test::check_gradients("maxpool2d", {{"x", tie_free({2, 3, 4, 6})}},
                        [](Builder& b, const Ids& in) { return b.maxpool2d(in[0], "pool"); });
  // Odd sizes: the last row and column belong to no window (zero gradient).
  test::check_gradients("maxpool2d odd", {{"x", tie_free({1, 2, 5, 7})}},
                        [](Builder& b, const Ids& in) { return b.maxpool2d(in[0], "pool"); }, {.probes = 16});
}

TEST(GradSpatial, MaxpoolThenConv2d) {
  // The pool's gradient flows on from a conv's. The pool reads the tie-free x (a pool after the conv would
  // have random window values that the weight probes can swap: a kink).
  test::check_gradients("maxpool2d -> conv2d",
                        {{"x", tie_free({1, 2, 8, 6})}, {"conv.weight", uniform({3, 2, 3, 3})},
                         {"conv.bias", uniform({3})}},
                        [](Builder& b, const Ids& in) {
                          return b.conv2d(b.maxpool2d(in[0], "pool"), "conv", 3, 3, 1, 1, true);
                        });
}

// ---- resize_bilinear ----

TEST(GradSpatial, ResizeBilinear) {
  test::check_gradients("resize_bilinear up", {{"x", uniform({2, 2, 3, 4})}},
                        [](Builder& b, const Ids& in) { return b.resize_bilinear(in[0], 7, 5, "up"); });
  test::check_gradients("resize_bilinear down", {{"x", uniform({1, 3, 6, 6})}},
                        [](Builder& b, const Ids& in) { return b.resize_bilinear(in[0], 4, 3, "down"); });
  test::check_gradients("resize_bilinear same size", {{"x", uniform({1, 2, 3, 3})}},
                        [](Builder& b, const Ids& in) { return b.resize_bilinear(in[0], 3, 3, "same"); });
}

// ---- permute ----

TEST(GradSpatial, Permute) {
  // Permutations that are not their own inverse, so a rule applying perm instead of its inverse fails.
  test::check_gradients("permute 4d", {{"x", uniform({2, 3, 4, 5})}},
                        [](Builder& b, const Ids& in) { return b.permute(in[0], {0, 2, 3, 1}, "nhwc"); });
  test::check_gradients("permute 3d", {{"x", uniform({2, 3, 4})}},
                        [](Builder& b, const Ids& in) { return b.permute(in[0], {2, 0, 1}, "p"); });
}

TEST(GradSpatial, PermuteAfterLinear) {
  // [B, C, L] -> [B, L, C] -> linear: the gradient reaches both the weight and x through the permute.
  test::check_gradients("permute -> linear", {{"x", uniform({2, 4, 3})}, {"w", uniform({5, 4})}},
                        [](Builder& b, const Ids& in) {
                          return b.linear(b.permute(in[0], {0, 2, 1}, "tokens"), in[1], kNoValue, "y");
                        });
}

// ---- concat ----

TEST(GradSpatial, ConcatInnerDim) {
  // Batch 2, dim 1: the split-node path. y is frozen: it must get no gradient.
  test::check_gradients("concat dim 1",
                        {{"a", uniform({2, 2, 3})}, {"y", uniform({2, 3, 3}), false}, {"c", uniform({2, 1, 3})}},
                        [](Builder& b, const Ids& in) { return b.concat({in[0], in[1], in[2]}, 1, "cat"); });
  test::check_gradients("concat dim -1", {{"a", uniform({2, 3, 2})}, {"c", uniform({2, 3, 4})}},
                        [](Builder& b, const Ids& in) { return b.concat({in[0], in[1]}, -1, "cat"); });
}

TEST(GradSpatial, ConcatLeadingDim) {
  // Dim 0, and dim 1 behind a batch of 1: the zero-copy row-view path.
  test::check_gradients("concat dim 0", {{"a", uniform({2, 3})}, {"y", uniform({1, 3}), false}, {"c", uniform({3, 3})}},
                        [](Builder& b, const Ids& in) { return b.concat({in[0], in[1], in[2]}, 0, "cat"); });
  test::check_gradients("concat dim 1, batch 1", {{"a", uniform({1, 2, 3})}, {"c", uniform({1, 4, 3})}},
                        [](Builder& b, const Ids& in) { return b.concat({in[0], in[1]}, 1, "cat"); });
}

TEST(GradSpatial, ConcatSameValueTwice) {
  // x appears twice in one concat (both pieces add up) and once more through a linear.
  for (int dim : {0, 1})
    test::check_gradients(dim == 0 ? "concat x twice, dim 0" : "concat x twice, dim 1",
                          {{"x", uniform({2, 3})}, {"w", uniform({3, 3})}}, [dim](Builder& b, const Ids& in) {
                            const ValueId h = b.linear(in[0], in[1], kNoValue, "h");
                            return b.concat({in[0], h, in[0]}, dim, "cat");
                          });
}

// ---- split ----

TEST(GradSpatial, SplitAllPartsUsed) {
  // The parts recombined in another order: every part has a gradient.
  test::check_gradients("split dim 1", {{"x", uniform({2, 6, 3})}}, [](Builder& b, const Ids& in) {
    const auto parts = b.split(in[0], {1, 3, 2}, 1, "parts");
    return b.concat({parts[2], parts[0], parts[1]}, 1, "shuffled");
  });
  test::check_gradients("split dim -1", {{"x", uniform({3, 5})}, {"w", uniform({2, 2})}}, [](Builder& b, const Ids& in) {
    const auto parts = b.split(in[0], {2, 3}, -1, "parts");
    return b.concat({b.linear(parts[0], in[1], kNoValue, "l"), parts[1]}, -1, "y");
  });
}

TEST(GradSpatial, SplitUnusedParts) {
  // Only parts 0 and 2 reach the output: part 1's gradient is zero (a constant), x still gets its full shape.
  test::check_gradients("split, middle part unused", {{"x", uniform({2, 6, 3})}}, [](Builder& b, const Ids& in) {
    const auto parts = b.split(in[0], {2, 1, 3}, 1, "parts");
    return b.concat({parts[2], parts[0]}, 1, "y");
  }, {.probes = 16});
  // Only one part reaches the output, through a linear; the others are unused.
  test::check_gradients("split, one part used", {{"x", uniform({4, 3})}, {"w", uniform({2, 3})}},
                        [](Builder& b, const Ids& in) {
                          const auto parts = b.split(in[0], {1, 2, 1}, 0, "parts");
                          return b.linear(parts[1], in[1], kNoValue, "y");
                        },
                        {.probes = 16});
}

TEST(GradSpatial, SplitPartUsedTwiceAndXUsedAgain) {
  // y = concat(p1, p1 W^T) + ... : part 1 reaches the output twice, x once more directly.
  test::check_gradients("split part twice", {{"x", uniform({3, 4})}, {"w", uniform({2, 2})}},
                        [](Builder& b, const Ids& in) {
                          const auto parts = b.split(in[0], {2, 2}, 1, "parts");
                          const ValueId h = b.concat({parts[1], b.linear(parts[1], in[1], kNoValue, "l")}, 1, "h");
                          return b.add(h, in[0], "y");
                        });
}

TEST(GradSpatial, SplitUnusedPartBuildsZeros) {
  // The backward of a split with an unused part: one zero constant of that part's shape and one concat.
  test::TapedGraph taped;
  auto& [g, store, tape, b] = taped;
  const ValueId x = g.weight("x", uniform({2, 5}));
  const auto parts = b.split(x, {3, 2}, 1, "parts");
  model::build_backward(b, tape, {{parts[0], g.constant("seed", uniform({2, 3}))}}, {x});
  const ValueId zeros = g.find("parts.1.grad.zeros");
  ASSERT_NE(zeros, kNoValue);
  EXPECT_EQ(g.value(zeros).shape, Shape({2, 2}));
  EXPECT_EQ(g.nodes().back().op, "split_backward");
  EXPECT_EQ(g.nodes().back().name, "parts.grad");
  EXPECT_EQ(g.value(g.find("grad.x")).shape, Shape({2, 5}));
}

// ---- a decoder-like chain ----

TEST(GradSpatial, Chain) {
  // conv (stride 2) -> upsample back -> concat with x -> permute to tokens -> linear, with frozen conv bias.
  test::check_gradients("chain",
                        {{"x", uniform({1, 2, 6, 6})}, {"conv.weight", uniform({3, 2, 3, 3})},
                         {"conv.bias", uniform({3}), false}, {"w", uniform({4, 5})}},
                        [](Builder& b, const Ids& in) {
                          const ValueId c = b.conv2d(in[0], "conv", 3, 3, 2, 1, true);
                          const ValueId up = b.resize_bilinear(c, 6, 6, "up");
                          const ValueId cat = b.concat({up, in[0]}, 1, "cat");
                          const ValueId tokens = b.reshape(b.permute(cat, {0, 2, 3, 1}, "nhwc"), {36, 5}, "tokens");
                          return b.linear(tokens, in[3], kNoValue, "y");
                        });
}

}  // namespace
}  // namespace mfuser
