// Backward rules of the normalization ops (graph/model/grad_rules_norm.cpp) against central differences:
// layernorm, groupnorm, training-mode batchnorm, gated RMSNorm and l2norm, with frozen weights, frozen inputs
// (the backward kernels still need grad_x, computed into a scratch output), several group counts and dims, and
// values used twice. Also Builder::batchnorm's training-mode forward (batch statistics, updated running
// statistics read back as graph outputs) against the kernel called directly, and its unchanged eval mode.
#include <gtest/gtest.h>

#include "graph/model/grad_rules.h"
#include "kernels/batchnorm/batchnorm.h"
#include "tests/graph/grad_check.h"

namespace mfuser {
namespace {

using graph::ValueId;
using model::Builder;
using test::GradInput;
using test::uniform;

// ---- layernorm ----

TEST(NormBackward, LayerNorm) {
  test::check_gradients("layernorm",
                        {{"x", uniform({2, 3, 6})}, {"ln.weight", uniform({6}, 0.5f, 1.5f)}, {"ln.bias", uniform({6})}},
                        [](Builder& b, const std::vector<ValueId>& in) { return b.layernorm(in[0], "ln", 1e-5f); });
}

TEST(NormBackward, LayerNormFrozenAffine) {
  test::check_gradients("layernorm frozen affine",
                        {{"x", uniform({4, 5})}, {"ln.weight", uniform({5}, 0.5f, 1.5f), false},
                         {"ln.bias", uniform({5}), false}},
                        [](Builder& b, const std::vector<ValueId>& in) { return b.layernorm(in[0], "ln", 1e-6f); });
}

TEST(NormBackward, LayerNormFrozenInputTrainedWeight) {
  // x is a frozen leaf: grad_x is a scratch output nobody reads; only the weight trains (the bias is frozen).
  test::check_gradients("layernorm frozen x",
                        {{"x", uniform({3, 4}), false}, {"ln.weight", uniform({4}, 0.5f, 1.5f)},
                         {"ln.bias", uniform({4}), false}},
                        [](Builder& b, const std::vector<ValueId>& in) { return b.layernorm(in[0], "ln", 1e-5f); });
}

TEST(NormBackward, LayerNormSharedWeightsAndResidual) {
  // The same norm (weights) twice, and x reaching the second norm twice (directly and through the first).
  test::check_gradients("layernorm twice",
                        {{"x", uniform({3, 6})}, {"ln.weight", uniform({6}, 0.5f, 1.5f)}, {"ln.bias", uniform({6})}},
                        [](Builder& b, const std::vector<ValueId>& in) {
                          const ValueId h = b.layernorm(in[0], "ln", 1e-5f, "ln_a");
                          return b.layernorm(b.add(h, in[0], "res"), "ln", 1e-5f, "ln_b");
                        });
}

// ---- groupnorm ----

TEST(NormBackward, GroupNorm) {
  for (int groups : {1, 3, 6}) {
    test::check_gradients("groupnorm groups " + std::to_string(groups),
                          {{"x", uniform({2, 6, 3, 2})}, {"gn.weight", uniform({6}, 0.5f, 1.5f)},
                           {"gn.bias", uniform({6})}},
                          [groups](Builder& b, const std::vector<ValueId>& in) {
                            return b.groupnorm(in[0], "gn", groups, 1e-5f);
                          });
  }
}

TEST(NormBackward, GroupNormNoSpatialFrozenWeight) {
  test::check_gradients("groupnorm [N, C]",
                        {{"x", uniform({3, 8})}, {"gn.weight", uniform({8}, 0.5f, 1.5f), false},
                         {"gn.bias", uniform({8})}},
                        [](Builder& b, const std::vector<ValueId>& in) { return b.groupnorm(in[0], "gn", 2); });
}

TEST(NormBackward, GroupNormFrozenInput) {
  test::check_gradients("groupnorm frozen x",
                        {{"x", uniform({2, 4, 3}), false}, {"gn.weight", uniform({4}, 0.5f, 1.5f)},
                         {"gn.bias", uniform({4})}},
                        [](Builder& b, const std::vector<ValueId>& in) { return b.groupnorm(in[0], "gn", 2); });
}

// ---- batchnorm (training mode) ----

// BatchNorm2d in training mode; the running statistics are read-only weights that get no gradient.
std::vector<GradInput> batchnorm_inputs(const Shape& x, bool want_x, bool want_weight, bool want_bias) {
  const int64_t c = x[1];
  return {{"x", uniform(x), want_x},
          {"bn.weight", uniform({c}, 0.5f, 1.5f), want_weight},
          {"bn.bias", uniform({c}), want_bias},
          {"bn.running_mean", uniform({c}), false},
          {"bn.running_var", uniform({c}, 0.5f, 1.5f), false}};
}

ValueId batchnorm_train(Builder& b, const std::vector<ValueId>& in) {
  b.set_training(true);
  return b.batchnorm(in[0], "bn");
}

TEST(NormBackward, BatchNormTrain) {
  // The output depends on the whole batch through the statistics: every grad_x element sees every other.
  test::check_gradients("batchnorm train", batchnorm_inputs({3, 4, 2, 2}, true, true, true), batchnorm_train);
}

TEST(NormBackward, BatchNormTrainNoSpatialFrozenWeight) {
  test::check_gradients("batchnorm train [N, C]", batchnorm_inputs({5, 3}, true, false, true), batchnorm_train);
}

TEST(NormBackward, BatchNormTrainFrozenInput) {
  test::check_gradients("batchnorm train frozen x", batchnorm_inputs({2, 3, 3}, false, true, false),
                        batchnorm_train);
}

TEST(NormBackward, BatchNormTrainInputUsedTwice) {
  // y = bn(x) + x: x's gradient sums the path through the batch statistics and the residual.
  test::check_gradients("batchnorm train residual", batchnorm_inputs({2, 3, 2, 2}, true, true, true),
                        [](Builder& b, const std::vector<ValueId>& in) {
                          return b.add(batchnorm_train(b, in), in[0], "y");
                        });
}

// Builder::batchnorm in training mode: out, the saved statistics and the updated running statistics equal the
// kernel's, the running-stat weights stay as they were, and another run gives the same results (the update
// starts from the weights each run, it does not compound inside the graph).
TEST(NormBackward, BatchNormTrainForward) {
  MFUSER_SEED_TRACE();
  const Shape xs{3, 4, 2, 3};
  const int64_t c = xs[1];
  const Tensor x = uniform(xs, -2.f, 3.f), weight = uniform({c}, 0.5f, 1.5f), bias = uniform({c});
  const Tensor running_mean = uniform({c}), running_var = uniform({c}, 0.5f, 1.5f);
  const Tensor mean_before = running_mean.to(Device::cpu()), var_before = running_var.to(Device::cpu());

  test::TapedGraph taped;
  auto& [g, store, tape, b] = taped;
  b.set_training(true);
  const ValueId xv = g.input("x", xs);
  g.weight("bn.weight", weight);
  g.weight("bn.bias", bias);
  g.weight("bn.running_mean", running_mean);
  g.weight("bn.running_var", running_var);
  const ValueId y = b.batchnorm(xv, "bn", 1e-3f);
  g.mark_output(y);
  g.mark_output(g.at("bn.save_mean"));  // read back below (the backward would read them)
  g.mark_output(g.at("bn.save_rstd"));
  EXPECT_EQ(g.value(y).name, "bn");
  ASSERT_EQ(tape.entries().size(), 1u);
  EXPECT_EQ(tape.entries()[0].outputs, std::vector<ValueId>{y});
  for (const char* name : {"bn.running_mean.updated", "bn.running_var.updated"}) {
    ASSERT_NE(g.find(name), graph::kNoValue) << name;
    EXPECT_TRUE(g.is_output(g.at(name))) << name;
    EXPECT_EQ(g.value(g.at(name)).dtype, DType::f32) << name;
  }

  Tensor ref_out = Tensor::empty(xs, DType::f32), ref_mean = Tensor::empty({c}, DType::f32),
         ref_rstd = Tensor::empty({c}, DType::f32);
  Tensor ref_rm = running_mean.to(Device::cpu()), ref_rv = running_var.to(Device::cpu());
  kernels::cpu::batchnorm_train(x, weight, bias, ref_rm, ref_rv, ref_out, ref_mean, ref_rstd, 0.1f, 1e-3f);

  graph::Executor ex(g, Device::cpu());
  ex.set_input("x", x);
  for (int run = 0; run < 2; ++run) {
    SCOPED_TRACE("run " + std::to_string(run));
    ex.run();
    const auto expect_equal = [&](const char* name, const Tensor& ref) {
      const test::ErrorStats e = test::compare(ex.get(name), ref);
      EXPECT_EQ(e.max_abs, 0.0) << name << ": " << test::describe(e);
    };
    expect_equal("bn", ref_out);
    expect_equal("bn.running_mean.updated", ref_rm);
    expect_equal("bn.running_var.updated", ref_rv);
    expect_equal("bn.save_mean", ref_mean);
    expect_equal("bn.save_rstd", ref_rstd);
    expect_equal("bn.running_mean", mean_before);  // the weights themselves are read-only
    expect_equal("bn.running_var", var_before);
  }
  // The update itself, as PyTorch: r = 0.9 r + 0.1 batch value, the unbiased variance for running_var.
  const int64_t m = xs.numel() / c;
  for (int64_t ch = 0; ch < c; ++ch) {
    double sum = 0, sq = 0;
    for (int64_t n = 0; n < xs[0]; ++n)
      for (int64_t i = 0; i < xs[2] * xs[3]; ++i) sum += x.data<float>()[(n * c + ch) * xs[2] * xs[3] + i];
    const double mean = sum / double(m);
    for (int64_t n = 0; n < xs[0]; ++n)
      for (int64_t i = 0; i < xs[2] * xs[3]; ++i) {
        const double d = x.data<float>()[(n * c + ch) * xs[2] * xs[3] + i] - mean;
        sq += d * d;
      }
    EXPECT_NEAR(ex.get("bn.running_mean.updated").data<float>()[ch],
                0.9 * mean_before.data<float>()[ch] + 0.1 * mean, 1e-5);
    EXPECT_NEAR(ex.get("bn.running_var.updated").data<float>()[ch],
                0.9 * var_before.data<float>()[ch] + 0.1 * sq / double(m - 1), 1e-5);
  }
}

// Eval mode is unchanged: one "batchnorm" node with the running statistics, nothing recorded on the tape.
TEST(NormBackward, BatchNormEvalRecordsNothing) {
  MFUSER_SEED_TRACE();
  const Shape xs{2, 3, 2, 2};
  const Tensor x = uniform(xs), weight = uniform({3}), bias = uniform({3});
  const Tensor running_mean = uniform({3}), running_var = uniform({3}, 0.5f, 1.5f);
  test::TapedGraph taped;
  auto& [g, store, tape, b] = taped;
  const ValueId xv = g.input("x", xs);
  g.weight("bn.weight", weight);
  g.weight("bn.bias", bias);
  g.weight("bn.running_mean", running_mean);
  g.weight("bn.running_var", running_var);
  const ValueId y = b.batchnorm(xv, "bn");
  g.mark_output(y);
  EXPECT_TRUE(tape.entries().empty());
  ASSERT_EQ(g.nodes().size(), 1u);
  EXPECT_EQ(g.nodes()[0].op, "batchnorm");
  EXPECT_EQ(g.find("bn.running_mean.updated"), graph::kNoValue);
  Tensor ref = Tensor::empty(xs, DType::f32);
  kernels::cpu::batchnorm(x, running_mean, running_var, weight, bias, ref, 1e-5f);
  graph::Executor ex(g, Device::cpu());
  ex.set_input("x", x);
  ex.run();
  EXPECT_EQ(test::compare(ex.get("bn"), ref).max_abs, 0.0);
}

// ---- gated RMSNorm ----

TEST(NormBackward, RmsNormGated) {
  test::check_gradients("rmsnorm_gated",
                        {{"x", uniform({2, 3, 8})}, {"z", uniform({2, 3, 8}, -2.f, 2.f)},
                         {"norm.weight", uniform({8}, 0.5f, 1.5f)}},
                        [](Builder& b, const std::vector<ValueId>& in) { return b.rmsnorm_gated(in[0], in[1], "norm"); });
}

TEST(NormBackward, RmsNormGatedFrozenWeight) {
  test::check_gradients("rmsnorm_gated frozen weight",
                        {{"x", uniform({4, 6})}, {"z", uniform({4, 6}, -2.f, 2.f)},
                         {"norm.weight", uniform({6}, 0.5f, 1.5f), false}},
                        [](Builder& b, const std::vector<ValueId>& in) { return b.rmsnorm_gated(in[0], in[1], "norm"); });
}

TEST(NormBackward, RmsNormGatedFrozenInputs) {
  // Each of x and z frozen in turn: the kernel still writes both, the frozen one into a scratch output.
  for (bool want_x : {false, true}) {
    test::check_gradients(want_x ? "rmsnorm_gated frozen z" : "rmsnorm_gated frozen x",
                          {{"x", uniform({3, 5}), want_x}, {"z", uniform({3, 5}, -2.f, 2.f), !want_x},
                           {"norm.weight", uniform({5}, 0.5f, 1.5f)}},
                          [](Builder& b, const std::vector<ValueId>& in) {
                            return b.rmsnorm_gated(in[0], in[1], "norm");
                          });
  }
}

TEST(NormBackward, RmsNormGatedSameValueAsInputAndGate) {
  // x gates itself: its gradient sums the grad_x and grad_z of one node.
  test::check_gradients("rmsnorm_gated x gates x",
                        {{"x", uniform({3, 6}, -2.f, 2.f)}, {"norm.weight", uniform({6}, 0.5f, 1.5f)}},
                        [](Builder& b, const std::vector<ValueId>& in) { return b.rmsnorm_gated(in[0], in[0], "norm"); });
}

// ---- l2norm ----

// Entries of magnitude in [0.5, 1) with random signs: every vector's norm is >= 0.5 * sqrt(length), far from the
// eps clamp and from the curvature near 0 that central differences with a step of 1e-2 would resolve poorly.
Tensor away_from_zero(const Shape& shape) {
  Tensor t = uniform(shape, 0.5f, 1.f);
  const Tensor sign = uniform(shape);
  for (int64_t i = 0; i < t.numel(); ++i)
    if (sign.data<float>()[i] < 0) t.data<float>()[i] = -t.data<float>()[i];
  return t;
}

TEST(NormBackward, L2NormDims) {
  for (int dim : {-1, 1, 0}) {
    test::check_gradients("l2norm dim " + std::to_string(dim), {{"x", away_from_zero({2, 4, 3, 2})}},
                          [dim](Builder& b, const std::vector<ValueId>& in) { return b.l2norm(in[0], dim, "n"); });
  }
}

TEST(NormBackward, L2NormUsedTwice) {
  // The score-map pattern: normalized embeddings against normalized text, plus x itself (x reaches y twice).
  test::check_gradients("l2norm twice", {{"x", away_from_zero({3, 5})}, {"t", away_from_zero({5})}},
                        [](Builder& b, const std::vector<ValueId>& in) {
                          const ValueId xn = b.l2norm(in[0], -1, "xn");
                          const ValueId tn = b.l2norm(in[1], 0, "tn");
                          return b.add(b.add(xn, tn, "xt"), in[0], "y");
                        });
}

}  // namespace
}  // namespace mfuser
