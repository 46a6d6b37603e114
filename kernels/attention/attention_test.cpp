// attention: CPU reference vs softmax(q k^T * scale + masks) v in PyTorch float64, at tiny shapes and the
// model's four attention shapes; masks, causality and the all-masked row.
#include "kernels/attention/attention.h"

#include <cmath>
#include <optional>

#include "tests/common/counter_random.h"
#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

struct Case {
  const char* name;
  bool causal;
  std::optional<float> scale;
};
// Same table as attention_golden.py (which masks a case uses is read off the file).
const Case kCases[] = {{"tiny", false, {}},        {"tiny_all", true, 0.3f},      {"tiny_tiles", true, {}},
                       {"vit", false, {}},         {"text", true, {}},            {"masked_1024", false, {}},
                       {"masked_4096", false, {}}, {"cross", false, {}}};

class AttentionTest : public ::testing::Test {
 protected:
  test::Golden golden_{"attention"};
};

TEST_F(AttentionTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const Case& c : kCases) {
    const std::string name = c.name;
    const auto& g = golden_.file;
    const Tensor bool_mask = g.contains(name + ".bool_mask") ? g.view(name + ".bool_mask") : Tensor();
    const Tensor float_mask = g.contains(name + ".float_mask") ? g.view(name + ".float_mask") : Tensor();
    Tensor out = Tensor::empty(g.view(name + ".q").shape(), DType::f32);
    test::poison(out);
    kernels::cpu::attention(g.view(name + ".q"), g.view(name + ".k"), g.view(name + ".v"), out, c.causal, bool_mask,
                            float_mask, c.scale);
    // Outputs are convex combinations of N(0, 1) values: |out| < ~5.
    test::expect_close(out, g.view(name + ".out"), "attention " + name, 1e-5);
  }
}

// The cases of attention_golden.py's BACKWARD set, with and without the forward's saved output.
TEST_F(AttentionTest, BackwardMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const Case& c : kCases) {
    const std::string name = c.name;
    const auto& g = golden_.file;
    if (!g.contains(name + ".grad_q")) continue;
    const Tensor bool_mask = g.contains(name + ".bool_mask") ? g.view(name + ".bool_mask") : Tensor();
    const Tensor float_mask = g.contains(name + ".float_mask") ? g.view(name + ".float_mask") : Tensor();
    const Tensor q = g.view(name + ".q"), k = g.view(name + ".k");
    // The golden generator's COUNTER_SALT: the ViT's upstream gradient is recomputed, not stored.
    const Tensor grad_out = name == "vit" ? test::counter_uniform(q.shape(), 1) : g.view(name + ".grad_out");
    for (const bool saved_out : {true, false}) {
      const std::string what = "attention_backward " + name + (saved_out ? " (saved out)" : " (no out)");
      Tensor gq = Tensor::empty(q.shape(), DType::f32), gk = Tensor::empty(k.shape(), DType::f32),
             gv = Tensor::empty(k.shape(), DType::f32);
      test::poison(gq);
      test::poison(gk);
      test::poison(gv);
      kernels::cpu::attention_backward(q, k, g.view(name + ".v"), saved_out ? g.view(name + ".out") : Tensor(),
                                       grad_out, gq, gk, gv, c.causal, bool_mask, float_mask, c.scale);
      // grad_v sums up to Lq probability-weighted N(0, 1) rows (O(1..5)); grad_q and grad_k are O(1).
      // Measured: rel_l2 <= 4.6e-7, max abs <= 1.5e-6 (f32 GEMMs over up to 4096 keys).
      test::expect_close(gq, g.view(name + ".grad_q"), what + " grad_q", 1e-5);
      test::expect_close(gk, g.view(name + ".grad_k"), what + " grad_k", 1e-5);
      test::expect_close(gv, g.view(name + ".grad_v"), what + " grad_v", 1e-5);
    }
  }
}

TEST_F(AttentionTest, AllMaskedRowIsNaN) {
  const int64_t lq = 3, lk = 4, d = 2;
  const Tensor q = Tensor::from_vector(std::vector<float>(lq * d, 0.5f), {1, 1, lq, d});
  const Tensor kv = Tensor::from_vector(std::vector<float>(lk * d, 1.f), {1, 1, lk, d});
  Tensor mask = Tensor::zeros({1, 1, lq, lk}, DType::boolean);
  for (int64_t j = 0; j < lk; ++j) mask.data<bool>()[1 * lk + j] = true;  // query 1 sees no key
  Tensor out = Tensor::zeros({1, 1, lq, d}, DType::f32);  // not poisoned: the poison is NaN
  kernels::cpu::attention(q, kv, kv, out, false, mask);
  for (int64_t i = 0; i < lq; ++i)
    for (int64_t c = 0; c < d; ++c) {
      const float y = out.data<float>()[i * d + c];
      if (i == 1)
        EXPECT_TRUE(std::isnan(y)) << "row " << i;
      else
        EXPECT_FLOAT_EQ(y, 1.f) << "row " << i;  // every value row is all ones
    }
}

TEST_F(AttentionTest, RejectsBadArguments) {
  const Tensor q = Tensor::zeros({1, 2, 3, 4}, DType::f32), kv = Tensor::zeros({1, 2, 5, 4}, DType::f32);
  Tensor out = Tensor::empty({1, 2, 3, 4}, DType::f32);
  const Tensor wrong_d = Tensor::zeros({1, 2, 5, 8}, DType::f32);
  EXPECT_THROW(kernels::attention(q, wrong_d, wrong_d, out), Error);
  const Tensor wrong_heads = Tensor::zeros({1, 3, 5, 4}, DType::f32);
  EXPECT_THROW(kernels::attention(q, wrong_heads, wrong_heads, out), Error);
  EXPECT_THROW(kernels::attention(q, kv, wrong_d, out), Error);
  Tensor wrong_out = Tensor::empty({1, 2, 5, 4}, DType::f32);
  EXPECT_THROW(kernels::attention(q, kv, kv, wrong_out), Error);
  const Tensor three_d = Tensor::zeros({2, 3, 4}, DType::f32);
  Tensor three_d_out = Tensor::empty({2, 3, 4}, DType::f32);
  EXPECT_THROW(kernels::attention(three_d, three_d, three_d, three_d_out), Error);
  const Tensor mask_wrong_lk = Tensor::zeros({1, 1, 3, 4}, DType::boolean);
  EXPECT_THROW(kernels::attention(q, kv, kv, out, false, mask_wrong_lk), Error);
  const Tensor mask_wrong_batch = Tensor::zeros({2, 1, 3, 5}, DType::boolean);
  EXPECT_THROW(kernels::attention(q, kv, kv, out, false, mask_wrong_batch), Error);
  const Tensor float_as_bool = Tensor::zeros({1, 1, 3, 5}, DType::f32);
  EXPECT_THROW(kernels::attention(q, kv, kv, out, false, float_as_bool), Error);
  const Tensor bool_as_float = Tensor::zeros({1, 1, 3, 5}, DType::boolean);
  EXPECT_THROW(kernels::attention(q, kv, kv, out, false, {}, bool_as_float), Error);
  EXPECT_THROW(kernels::attention(q, kv, kv, out, false, {}, {}, std::nanf("")), Error);
}

TEST_F(AttentionTest, BackwardRejectsBadArguments) {
  const Tensor q = Tensor::zeros({1, 2, 3, 4}, DType::f32), kv = Tensor::zeros({1, 2, 5, 4}, DType::f32);
  Tensor gq = Tensor::empty({1, 2, 3, 4}, DType::f32), gk = Tensor::empty({1, 2, 5, 4}, DType::f32),
         gv = Tensor::empty({1, 2, 5, 4}, DType::f32), none;
  EXPECT_NO_THROW(kernels::attention_backward(q, kv, kv, q, q, gq, gk, gv));
  EXPECT_NO_THROW(kernels::attention_backward(q, kv, kv, none, q, gq, gk, gv));
  EXPECT_THROW(kernels::attention_backward(q, kv, kv, kv, q, gq, gk, gv), Error);      // out shaped like k
  EXPECT_THROW(kernels::attention_backward(q, kv, kv, none, kv, gq, gk, gv), Error);   // grad_out shaped like k
  EXPECT_THROW(kernels::attention_backward(q, kv, kv, none, q, gk, gk, gv), Error);    // grad_q shaped like k
  EXPECT_THROW(kernels::attention_backward(q, kv, kv, none, q, gq, gq, gv), Error);    // grad_k shaped like q
  EXPECT_THROW(kernels::attention_backward(q, kv, kv, none, q, gq, gk, gq), Error);    // grad_v shaped like q
  EXPECT_THROW(kernels::attention_backward(q, kv, kv, none, q, gq, gk, none), Error);  // grad_v required
  const Tensor wrong_d = Tensor::zeros({1, 2, 5, 8}, DType::f32);
  EXPECT_THROW(kernels::attention_backward(q, wrong_d, wrong_d, none, q, gq, gk, gv), Error);
  const Tensor mask_wrong_lk = Tensor::zeros({1, 1, 3, 4}, DType::boolean);
  EXPECT_THROW(kernels::attention_backward(q, kv, kv, none, q, gq, gk, gv, false, mask_wrong_lk), Error);
  const Tensor bf16 = Tensor::zeros({1, 2, 3, 4}, DType::bf16);
  EXPECT_THROW(kernels::attention_backward(q, kv, kv, none, bf16, gq, gk, gv), Error);
  EXPECT_THROW(kernels::attention_backward(q, kv, kv, none, q, gq, gk, gv, false, {}, {}, INFINITY), Error);
}

}  // namespace
}  // namespace mfuser
