// The backward rules of the dense and element-wise ops (graph/model/grad_rules_dense.cpp): matmul (2-D and
// batched, trans_b, alpha), mul (broadcasts), scale, activation, softmax (masks), attention (causal, masks)
// and embedding, against central differences; frozen inputs, values used more than once.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "graph/model/grad_rules.h"
#include "tests/graph/grad_check.h"

namespace mfuser {
namespace {

using graph::kNoValue;
using graph::ValueId;
using kernels::Activation;
using model::Builder;
using test::GradInput;
using test::uniform;

using Inputs = std::vector<ValueId>;

// Uniform values with |x| in [0.2, 1): away from the kinks at 0 (relu) by much more than the checker's step.
Tensor away_from_zero(const Shape& shape) {
  Tensor t = uniform(shape, 0.2f, 1.f);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); i += 2) p[i] = -p[i];
  return t;
}

// A boolean mask (true = masked out) with the listed flat positions set.
Tensor bool_mask(const Shape& shape, const std::vector<int64_t>& masked) {
  Tensor t = Tensor::zeros(shape, DType::boolean);
  for (int64_t i : masked) t.data<bool>()[i] = true;
  return t;
}

// ---- matmul ----

TEST(GradDense, MatmulTwoD) {
  // The backbone projection: [tokens, C] @ [C, E].
  test::check_gradients("matmul 2-D", {{"x", uniform({6, 4})}, {"y", uniform({4, 5})}},
                        [](Builder& b, const Inputs& in) { return b.matmul(in[0], in[1], false, "y_out"); });
}

TEST(GradDense, MatmulFrozenOperands) {
  test::check_gradients("matmul frozen y", {{"x", uniform({2, 3, 4})}, {"y", uniform({2, 4, 5}), false}},
                        [](Builder& b, const Inputs& in) { return b.matmul(in[0], in[1], false, "z", 0.7f); });
  test::check_gradients("matmul frozen x", {{"x", uniform({2, 3, 4}), false}, {"y", uniform({2, 4, 5})}},
                        [](Builder& b, const Inputs& in) { return b.matmul(in[0], in[1], false, "z", 0.7f); });
  test::check_gradients("matmul trans_b frozen x", {{"x", uniform({2, 3, 4}), false}, {"y", uniform({2, 5, 4})}},
                        [](Builder& b, const Inputs& in) { return b.matmul(in[0], in[1], true, "z", -1.3f); });
  test::check_gradients("matmul trans_b frozen y", {{"x", uniform({2, 3, 4})}, {"y", uniform({2, 5, 4}), false}},
                        [](Builder& b, const Inputs& in) { return b.matmul(in[0], in[1], true, "z", -1.3f); });
}

TEST(GradDense, MatmulBatchedTransposedScaled) {
  // Attention-like scores q k^T * alpha over [B, H] batches.
  test::check_gradients("matmul q k^T", {{"q", uniform({2, 3, 4, 5})}, {"k", uniform({2, 3, 6, 5})}},
                        [](Builder& b, const Inputs& in) { return b.matmul(in[0], in[1], true, "scores", 0.5f); });
  // P @ V, batched, no transpose, alpha != 1.
  test::check_gradients("matmul p v", {{"p", uniform({2, 3, 4, 6})}, {"v", uniform({2, 3, 6, 5})}},
                        [](Builder& b, const Inputs& in) { return b.matmul(in[0], in[1], false, "pv", 2.f); });
  // The text projection: [1, classes, C] @ [1, C, E].
  test::check_gradients("matmul batch 1", {{"x", uniform({1, 3, 4})}, {"y", uniform({1, 4, 2})}},
                        [](Builder& b, const Inputs& in) { return b.matmul(in[0], in[1], false, "proj"); });
}

TEST(GradDense, MatmulOperandUsedTwice) {
  // x @ x^T: x is both operands, its gradient is the sum of both.
  test::check_gradients("matmul x x^T", {{"x", uniform({2, 3, 4})}},
                        [](Builder& b, const Inputs& in) { return b.matmul(in[0], in[0], true, "gram", 0.8f); });
  // x @ x (square, no transpose).
  test::check_gradients("matmul x x", {{"x", uniform({2, 3, 3})}},
                        [](Builder& b, const Inputs& in) { return b.matmul(in[0], in[0], false, "sq"); });
}

// ---- mul, scale ----

TEST(GradDense, MulSameShape) {
  test::check_gradients("mul", {{"a", uniform({2, 3, 4})}, {"b", uniform({2, 3, 4})}},
                        [](Builder& b, const Inputs& in) { return b.mul(in[0], in[1], "y"); });
  test::check_gradients("mul frozen a", {{"a", uniform({2, 3, 4}), false}, {"b", uniform({2, 3, 4})}},
                        [](Builder& b, const Inputs& in) { return b.mul(in[0], in[1], "y"); });
  test::check_gradients("mul x x", {{"x", uniform({3, 4})}},
                        [](Builder& b, const Inputs& in) { return b.mul(in[0], in[0], "y"); });
}

TEST(GradDense, MulBroadcasts) {
  // A learned 0-d scale (MVFuser's output scale).
  test::check_gradients("mul 0-d", {{"x", uniform({2, 3, 4})}, {"s", uniform(Shape{})}},
                        [](Builder& b, const Inputs& in) { return b.mul(in[0], in[1], "y"); });
  // A per-channel gamma [C] (LayerScale); frozen activations.
  test::check_gradients("mul gamma", {{"x", uniform({2, 3, 4}), false}, {"gamma", uniform({4})}},
                        [](Builder& b, const Inputs& in) { return b.mul(in[0], in[1], "y"); });
  // A [C, 1, 1] constant onto NCHW (the DINO input normalization): only the image gets a gradient.
  test::check_gradients("mul [C,1,1]", {{"image", uniform({2, 3, 2, 4})}, {"scale", uniform({3, 1, 1}), false}},
                        [](Builder& b, const Inputs& in) { return b.mul(in[0], in[1], "y"); });
  // The same as a wanted operand, and a middle-dim broadcast [3, 1, 4] onto [2, 3, 5, 4].
  test::check_gradients("mul [C,1,1] wanted", {{"image", uniform({2, 3, 2, 4})}, {"scale", uniform({3, 1, 1})}},
                        [](Builder& b, const Inputs& in) { return b.mul(in[0], in[1], "y"); });
  test::check_gradients("mul [3,1,4]", {{"a", uniform({2, 3, 5, 4})}, {"b", uniform({3, 1, 4})}},
                        [](Builder& b, const Inputs& in) { return b.mul(in[0], in[1], "y"); });
}

TEST(GradDense, Scale) {
  test::check_gradients("scale", {{"x", uniform({2, 5})}},
                        [](Builder& b, const Inputs& in) { return b.scale(in[0], -1.7f, "y", 0.3f); });
  // x * 3 + x: two uses.
  test::check_gradients("scale plus x", {{"x", uniform({2, 5})}}, [](Builder& b, const Inputs& in) {
    return b.add(b.scale(in[0], 3.f, "x3"), in[0], "y");
  });
}

// ---- activation ----

TEST(GradDense, Activations) {
  for (Activation kind : {Activation::gelu, Activation::quick_gelu, Activation::silu, Activation::relu,
                          Activation::sigmoid, Activation::softplus, Activation::exp}) {
    test::check_gradients(std::string("activation ") + std::string(kernels::activation_name(kind)),
                          {{"x", away_from_zero({3, 7})}}, [kind](Builder& b, const Inputs& in) {
                            return b.activation(in[0], kind, "y");
                          });
  }
  // Softplus above its threshold (20): gradient exactly 1 there.
  test::check_gradients("softplus large", {{"x", uniform({8}, 21.f, 25.f)}},
                        [](Builder& b, const Inputs& in) { return b.activation(in[0], Activation::softplus, "y"); });
}

TEST(GradDense, ActivationAfterLinear) {
  // The input x of the activation is a computed value that the backward keeps alive.
  test::check_gradients("linear gelu", {{"x", uniform({4, 3})}, {"w", uniform({5, 3})}},
                        [](Builder& b, const Inputs& in) {
                          const ValueId h = b.linear(in[0], in[1], kNoValue, "h");
                          return b.activation(h, Activation::gelu, "y");
                        });
}

// ---- softmax ----

TEST(GradDense, Softmax) {
  test::check_gradients("softmax", {{"x", uniform({2, 3, 5}, -2.f, 2.f)}},
                        [](Builder& b, const Inputs& in) { return b.softmax(in[0], kNoValue, "y"); });
}

TEST(GradDense, SoftmaxMasks) {
  // An additive [Lq, Lk] mask (one -inf) broadcast over [B, H]: a frozen input, it gets no gradient.
  Tensor additive = uniform({3, 5});
  additive.data<float>()[7] = -std::numeric_limits<float>::infinity();
  test::check_gradients("softmax additive mask", {{"x", uniform({2, 2, 3, 5}, -2.f, 2.f)}, {"mask", additive, false}},
                        [](Builder& b, const Inputs& in) { return b.softmax(in[0], in[1], "y"); });
  // A boolean key-padding mask [B, 1, 1, Lk].
  test::check_gradients("softmax bool mask", {{"x", uniform({2, 2, 3, 5}, -2.f, 2.f)}},
                        [](Builder& b, const Inputs& in) {
                          const ValueId mask = b.constant("mask", bool_mask({2, 1, 1, 5}, {1, 4, 5}));
                          return b.softmax(in[0], mask, "y");
                        });
}

TEST(GradDense, UnfusedAttentionChain) {
  // softmax(q k^T * s + mask) @ v with q also used as the keys: matmul, softmax and matmul rules chained.
  test::check_gradients("unfused attention", {{"q", uniform({1, 2, 3, 4})}, {"v", uniform({1, 2, 3, 4})}},
                        [](Builder& b, const Inputs& in) {
                          const ValueId s = b.matmul(in[0], in[0], true, "scores", 0.5f);
                          const ValueId p = b.softmax(s, b.constant("causal", bool_mask({3, 3}, {1, 2, 5})), "p");
                          return b.matmul(p, in[1], false, "o");
                        });
}

// ---- attention ----

TEST(GradDense, Attention) {
  test::check_gradients("attention",
                        {{"q", uniform({2, 2, 3, 4})}, {"k", uniform({2, 2, 5, 4})}, {"v", uniform({2, 2, 5, 4})}},
                        [](Builder& b, const Inputs& in) { return b.attention(in[0], in[1], in[2], "o"); });
}

TEST(GradDense, AttentionCausalAndFrozen) {
  // Causal, top-left aligned with Lq != Lk (query 0 sees key 0 only).
  test::check_gradients("attention causal",
                        {{"q", uniform({1, 2, 4, 3})}, {"k", uniform({1, 2, 6, 3})}, {"v", uniform({1, 2, 6, 3})}},
                        [](Builder& b, const Inputs& in) { return b.attention(in[0], in[1], in[2], "o", true); });
  // Only the queries wanted (frozen keys and values), and only the values.
  test::check_gradients(
      "attention q only",
      {{"q", uniform({1, 2, 3, 4})}, {"k", uniform({1, 2, 5, 4}), false}, {"v", uniform({1, 2, 5, 4}), false}},
      [](Builder& b, const Inputs& in) { return b.attention(in[0], in[1], in[2], "o"); });
  test::check_gradients(
      "attention v only",
      {{"q", uniform({1, 2, 3, 4}), false}, {"k", uniform({1, 2, 5, 4}), false}, {"v", uniform({1, 2, 5, 4})}},
      [](Builder& b, const Inputs& in) { return b.attention(in[0], in[1], in[2], "o"); });
}

TEST(GradDense, AttentionMasks) {
  // A boolean [1, H, Lq, Lk] mask broadcast over the batch (no row fully masked), causal on top.
  test::check_gradients(
      "attention bool mask",
      {{"q", uniform({2, 2, 3, 4})}, {"k", uniform({2, 2, 5, 4})}, {"v", uniform({2, 2, 5, 4})}},
      [](Builder& b, const Inputs& in) {
        const ValueId mask = b.constant("mask", bool_mask({1, 2, 3, 5}, {1, 3, 6, 9, 15, 19, 24}));
        return b.attention(in[0], in[1], in[2], "o", false, mask);
      });
  // A float [B, 1, Lq, Lk] mask with one -inf on a visible key (a frozen input: no gradient), plus a boolean one, causal.
  Tensor additive = uniform({2, 1, 4, 5});
  additive.data<float>()[16] = -std::numeric_limits<float>::infinity();
  test::check_gradients("attention float and bool masks, causal",
                        {{"q", uniform({2, 2, 4, 3})},
                         {"k", uniform({2, 2, 5, 3})},
                         {"v", uniform({2, 2, 5, 3})},
                         {"fmask", additive, false}},
                        [](Builder& b, const Inputs& in) {
                          const ValueId mask = b.constant("mask", bool_mask({1, 1, 4, 5}, {11, 17}));
                          return b.attention(in[0], in[1], in[2], "o", true, mask, in[3]);
                        });
}

TEST(GradDense, SelfAttentionOneValueThreeTimes) {
  // q = k = v = x: its gradient is the sum of all three.
  test::check_gradients("self attention", {{"x", uniform({1, 2, 4, 3})}},
                        [](Builder& b, const Inputs& in) { return b.attention(in[0], in[0], in[0], "o", true); });
}

// ---- embedding ----

TEST(GradDense, EmbeddingFrozenTableLetsOtherGradientsThrough) {
  // The frozen token embedding: the table gets no gradient, the weight after it does.
  test::check_gradients("embedding frozen", {{"table", uniform({6, 4}), false}, {"gamma", uniform({4})}},
                        [](Builder& b, const Inputs& in) {
                          const ValueId ids =
                              b.graph().constant("ids", Tensor::from_vector<int64_t>({5, 0, 2, 2, 3, 1}, {2, 3}));
                          return b.mul(b.embedding(ids, in[0], "emb"), in[1], "y");
                        });
}

TEST(GradDense, EmbeddingRuleDoesNothingForAFrozenTable) {
  graph::Graph g;
  model::WeightStore store = model::WeightStore::synthesize(0);
  Builder b(g, store);
  const ValueId ids = g.constant("ids", Tensor::from_vector<int64_t>({1, 0}, {2}));
  const ValueId table = g.weight("table", uniform({3, 4}));
  const ValueId out = b.embedding(ids, table, "emb");
  const ValueId seed = g.constant("seed", uniform({2, 4}));
  std::vector<bool> requires_grad(g.values().size(), false);
  std::map<ValueId, ValueId> grads = {{out, seed}};
  model::GradContext c(b, requires_grad, grads);
  const size_t nodes = g.nodes().size();
  model::grad::embedding(ids, table, out)(c);
  EXPECT_EQ(g.nodes().size(), nodes);
  EXPECT_EQ(grads.size(), 1u);
}

TEST(GradDense, EmbeddingTableGradientThrows) {
  const auto expect_throw = [](bool table_is_activation) {
    test::TapedGraph taped;
    auto& [g, store, tape, b] = taped;
    const ValueId ids = g.constant("ids", Tensor::from_vector<int64_t>({1, 0}, {2}));
    const ValueId w = g.weight("table", uniform({3, 4}));
    // A wanted table, or one computed from a wanted weight (as the text encoder's EOT gather).
    const ValueId table = table_is_activation ? b.scale(w, 2.f, "table_x2") : w;
    const ValueId out = b.embedding(ids, table, "emb");
    try {
      model::build_backward(b, tape, {{out, g.constant("seed", uniform({2, 4}))}}, {w});
      ADD_FAILURE() << "the gradient of an embedding table was built";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("'emb'"), std::string::npos) << what;
      EXPECT_NE(what.find("not implemented"), std::string::npos) << what;
    }
  };
  expect_throw(false);
  expect_throw(true);
}

// Dropout (training mode) is linear in x with a mask drawn from the step's seed: the backward must redraw the
// forward's mask, grad_x = keep * R / (1 - p), a value used twice summing both masks. Outside training it is no
// node at all.
TEST(GradDense, DropoutRedrawsTheForwardMask) {
  test::TapedGraph taped;
  auto& [g, store, tape, b] = taped;
  const ValueId x = g.weight("x", away_from_zero({6, 50}));
  const size_t before = g.nodes().size();
  EXPECT_EQ(b.dropout(x, 0.3f, "eval_mode"), x);
  EXPECT_EQ(g.nodes().size(), before);
  b.set_training(true);
  const ValueId y = b.dropout(x, 0.3f, "drop");
  const ValueId y_path = b.dropout(x, 0.5f, "drop_path", /*inner=*/50, /*units=*/6);  // one draw per row
  const ValueId out = b.add(y, y_path, "out");
  g.mark_output(y);
  g.mark_output(y_path);
  const Tensor r = uniform({6, 50});
  const model::Gradients grads = model::build_backward(b, tape, {{out, g.constant("r", r)}}, {x});
  g.mark_output(grads.at(x));
  graph::Executor ex(g, Device::cpu());
  ex.set_input(Builder::kDropoutSeed, Tensor::from_vector<int64_t>({int64_t(test::seed())}, {1}));
  ex.run();
  const Tensor fy = ex.get("drop"), fp = ex.get("drop_path"), gx = ex.get(g.value(grads.at(x)).name);
  const float* xv = g.value(x).bound.data<float>();
  int64_t wrong = 0, dropped = 0, dropped_rows = 0;
  for (int64_t i = 0; i < r.numel(); ++i) {
    const bool keep = fy.data<float>()[i] != 0.f, keep_path = fp.data<float>()[i] != 0.f;
    dropped += !keep;
    if (i % 50 == 0) dropped_rows += !keep_path;
    wrong += keep && fy.data<float>()[i] != xv[i] * (1.f / 0.7f);
    wrong += keep_path != (fp.data<float>()[i / 50 * 50] != 0.f);  // the whole row shares its draw
    const float want = (keep ? r.data<float>()[i] * (1.f / 0.7f) : 0.f) + (keep_path ? r.data<float>()[i] * 2.f : 0.f);
    wrong += std::fabs(gx.data<float>()[i] - want) > 1e-6f * (1 + std::fabs(want));
  }
  EXPECT_EQ(wrong, 0) << "seed " << test::seed();
  std::printf("[ dropout  ] %lld of 300 elements and %lld of 6 rows dropped\n", static_cast<long long>(dropped),
              static_cast<long long>(dropped_rows));
  EXPECT_GT(dropped, 0);
  EXPECT_LT(dropped, 300);
}

}  // namespace
}  // namespace mfuser
