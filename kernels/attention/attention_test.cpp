// attention: CPU reference vs softmax(q k^T * scale + masks) v in PyTorch float64, at tiny shapes and the
// model's four attention shapes; masks, causality and the all-masked row. CUDA kernel (f32 and bf16) vs the
// CPU reference at the model's shapes and every mask/causal/scale combination.
#include "kernels/attention/attention.h"

#include <cmath>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cast/cast.h"
#include "tests/common/counter_random.h"
#include "tests/common/cuda_test.h"
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

// ---- CUDA kernel vs the CPU reference ----------------------------------------------------------------------

enum class MaskShape { none, per_head, broadcast };  // [B, H, Lq, Lk], or [1, 1, Lq, Lk]

struct CudaCase {
  const char* name;
  int64_t b, h, lq, lk, d;
  bool causal = false;
  MaskShape bool_mask = MaskShape::none, float_mask = MaskShape::none;
  std::optional<float> scale = {};
  bool all_masked_row = false;  // every key of query 1 masked (in every batch and head): NaN rows
};

const CudaCase kCudaCases[] = {
    // The model's shapes.
    {.name = "vit", .b = 1, .h = 16, .lq = 1025, .lk = 1025, .d = 64},
    {.name = "text", .b = 1, .h = 12, .lq = 10, .lk = 10, .d = 64, .causal = true},
    {.name = "text_batch2", .b = 2, .h = 12, .lq = 10, .lk = 10, .d = 64, .causal = true},
    {.name = "masked_1024", .b = 1, .h = 8, .lq = 19, .lk = 1024, .d = 32, .bool_mask = MaskShape::per_head,
     .all_masked_row = true},
    {.name = "masked_4096", .b = 1, .h = 8, .lq = 19, .lk = 4096, .d = 32, .bool_mask = MaskShape::broadcast},
    {.name = "masked_batch18", .b = 18, .h = 8, .lq = 19, .lk = 1024, .d = 32, .bool_mask = MaskShape::per_head},
    {.name = "cross", .b = 1, .h = 8, .lq = 5376, .lk = 19, .d = 32},
    // Causality with Lq != Lk, masks of both kinds and shapes, explicit scales.
    {.name = "causal_lq<lk", .b = 1, .h = 2, .lq = 17, .lk = 70, .d = 64, .causal = true, .scale = 0.3f},
    {.name = "causal_lq>lk", .b = 2, .h = 2, .lq = 130, .lk = 17, .d = 32, .causal = true},
    {.name = "float_mask", .b = 2, .h = 3, .lq = 65, .lk = 129, .d = 64, .float_mask = MaskShape::per_head,
     .scale = 0.125f, .all_masked_row = true},
    {.name = "both_masks_causal", .b = 1, .h = 4, .lq = 17, .lk = 1025, .d = 32, .causal = true,
     .bool_mask = MaskShape::per_head, .float_mask = MaskShape::broadcast},
    {.name = "both_masks_batch2", .b = 2, .h = 3, .lq = 33, .lk = 100, .d = 64, .bool_mask = MaskShape::broadcast,
     .float_mask = MaskShape::per_head, .all_masked_row = true},
    {.name = "sharp", .b = 1, .h = 2, .lq = 65, .lk = 200, .d = 64, .scale = 4.f},  // scores up to ~+-40
    // Odd lengths and head dims (tails of every tile; head dims that are not multiples of 16 or of 8).
    {.name = "one_query", .b = 1, .h = 2, .lq = 1, .lk = 17, .d = 64},
    {.name = "one_key", .b = 1, .h = 2, .lq = 17, .lk = 1, .d = 64, .float_mask = MaskShape::broadcast},
    {.name = "d3", .b = 1, .h = 2, .lq = 17, .lk = 33, .d = 3, .causal = true},
    {.name = "d8", .b = 1, .h = 1, .lq = 5, .lk = 9, .d = 8},
    {.name = "d40", .b = 1, .h = 2, .lq = 33, .lk = 70, .d = 40, .bool_mask = MaskShape::per_head},
    {.name = "d96", .b = 1, .h = 2, .lq = 70, .lk = 65, .d = 96},
    {.name = "d128", .b = 1, .h = 2, .lq = 65, .lk = 100, .d = 128, .causal = true, .bool_mask = MaskShape::broadcast},
};

Shape mask_shape(const CudaCase& c, MaskShape m) {
  return m == MaskShape::per_head ? Shape{c.b, c.h, c.lq, c.lk} : Shape{1, 1, c.lq, c.lk};
}

// The key that stays visible in every mask row except the all-masked one (causality keeps key 0 visible).
int64_t kept_key(const CudaCase& c, int64_t i) { return c.causal ? 0 : (i * 7) % c.lk; }

// Mask rows of three kinds by row: nothing masked, about half masked, about 90% masked.
Tensor make_bool_mask(const CudaCase& c) {
  Tensor mask = Tensor::zeros(mask_shape(c, c.bool_mask), DType::boolean);
  bool* p = mask.data<bool>();
  std::bernoulli_distribution half(0.5), most(0.9);
  for (int64_t r = 0; r < mask.numel() / c.lk; ++r) {
    const int64_t i = r % c.lq;
    for (int64_t j = 0; j < c.lk; ++j) {
      const bool masked = r % 3 == 1 ? half(test::rng()) : r % 3 == 2 && most(test::rng());
      p[r * c.lk + j] = (c.all_masked_row && i == 1) || (masked && j != kept_key(c, i));
    }
  }
  return mask;
}

// Biases in [-2, 2) with about a quarter -inf.
Tensor make_float_mask(const CudaCase& c, DType dtype) {
  Tensor mask = test::random_host(mask_shape(c, c.float_mask), dtype, -2.f, 2.f);
  float* p = mask.data<float>();
  std::bernoulli_distribution removed(0.25);
  for (int64_t r = 0; r < mask.numel() / c.lk; ++r) {
    const int64_t i = r % c.lq;
    for (int64_t j = 0; j < c.lk; ++j)
      if ((c.all_masked_row && i == 1) || (removed(test::rng()) && j != kept_key(c, i)))
        p[r * c.lk + j] = -INFINITY;
  }
  return mask;
}

// CUDA output vs CPU reference by query row: a row the reference makes NaN (all keys masked) must be NaN
// throughout; all other rows are compared together within the dtype's tolerance. Returns the NaN rows.
int64_t expect_rows_close(const Tensor& out_cuda, const Tensor& ref, const std::string& what, double norm_floor = 0) {
  const Tensor out = kernels::cast_to(out_cuda, DType::f32).to(Device::cpu());
  const int64_t d = ref.dim(-1);
  const float* po = out.data<float>();
  const float* pr = ref.data<float>();
  std::vector<float> kept_out, kept_ref;
  int64_t nan_rows = 0, nan_mismatches = 0;
  for (int64_t r = 0; r < ref.numel() / d; ++r) {
    if (std::isnan(pr[r * d])) {
      ++nan_rows;
      for (int64_t c = 0; c < d; ++c) nan_mismatches += !std::isnan(po[r * d + c]);
    } else {
      kept_out.insert(kept_out.end(), po + r * d, po + (r + 1) * d);
      kept_ref.insert(kept_ref.end(), pr + r * d, pr + (r + 1) * d);
    }
  }
  EXPECT_EQ(nan_mismatches, 0) << what << ": elements of all-masked rows that are not NaN";
  const Shape kept{int64_t(kept_ref.size())};
  test::expect_cuda_close(Tensor::from_vector(kept_out, kept), Tensor::from_vector(kept_ref, kept), what,
                          test::cuda_tolerance(out_cuda.dtype()), norm_floor);
  return nan_rows;
}

// bf16: inputs are bf16 values, S is exact products summed in f32, P is rounded to bf16 (relative 2^-9 per
// weight) and so is the output: measured rel_l2 well below the 2e-2 bound (printed per case).
TEST(AttentionCuda, MatchesCpuReference) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      const std::string what = str_cat("attention ", c.name, " ", dtype_name(dtype));
      SCOPED_TRACE(what);
      const Tensor q = test::random_host({c.b, c.h, c.lq, c.d}, dtype);
      const Tensor k = test::random_host({c.b, c.h, c.lk, c.d}, dtype);
      const Tensor v = test::random_host({c.b, c.h, c.lk, c.d}, dtype);
      const Tensor bool_mask = c.bool_mask == MaskShape::none ? Tensor() : make_bool_mask(c);
      const Tensor float_mask = c.float_mask == MaskShape::none ? Tensor() : make_float_mask(c, dtype);
      Tensor ref = Tensor::empty(q.shape(), DType::f32);
      kernels::cpu::attention(q, k, v, ref, c.causal, bool_mask, float_mask, c.scale);
      // The poison is NaN: where NaN rows are expected the output starts as zeros, so they must be written.
      Tensor out = c.all_masked_row ? Tensor::zeros(q.shape(), dtype, Device::cuda())
                                    : test::poisoned_cuda(q.shape(), dtype);
      kernels::attention(test::to_cuda(q, dtype), test::to_cuda(k, dtype), test::to_cuda(v, dtype), out, c.causal,
                         bool_mask.defined() ? bool_mask.to(Device::cuda()) : Tensor(),
                         test::to_cuda(float_mask, dtype), c.scale);
      EXPECT_EQ(expect_rows_close(out, ref, what), c.all_masked_row ? c.b * c.h : 0);
    }
  }
}

// Inputs that do not start on a 16-byte boundary (views at an odd element offset) take the scalar loads.
TEST(AttentionCuda, UnalignedViews) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const Shape shape{1, 2, 70, 64};
  const auto unaligned_cuda = [&](const Tensor& host, DType dtype) {
    Tensor flat = Tensor::empty({host.numel() + 1}, dtype, Device::cuda());
    Tensor view = flat.slice_rows(1, host.numel() + 1).reshape(shape);
    view.copy_from(test::to_cuda(host, dtype));
    return view;
  };
  for (const DType dtype : test::kCudaDtypes) {
    const Tensor q = test::random_host(shape, dtype), k = test::random_host(shape, dtype),
                 v = test::random_host(shape, dtype);
    Tensor ref = Tensor::empty(shape, DType::f32);
    kernels::cpu::attention(q, k, v, ref, true);
    Tensor out = test::poisoned_cuda(shape, dtype);
    kernels::attention(unaligned_cuda(q, dtype), unaligned_cuda(k, dtype), unaligned_cuda(v, dtype), out, true);
    expect_rows_close(out, ref, str_cat("attention unaligned ", dtype_name(dtype)));
  }
}

// Every element of a CUDA gradient NaN (an all-masked query row poisons every grad_k / grad_v row).
void expect_all_nan(const Tensor& out_cuda, const std::string& what) {
  const Tensor out = kernels::cast_to(out_cuda, DType::f32).to(Device::cpu());
  int64_t finite = 0;
  for (int64_t e = 0; e < out.numel(); ++e) finite += !std::isnan(out.data<float>()[e]);
  EXPECT_EQ(finite, 0) << what << ": elements that are not NaN";
}

// attention_backward on CUDA vs the CPU backward, with and without the forward's output, in the model's shapes
// and every mask / causal / odd-size case of the forward (minus the biggest CPU references: the batch-18 masked
// case). Gradients of k and v sum over up to 5376 queries in f32 on both sides: measured error printed per case.
TEST(AttentionCuda, BackwardMatchesCpuReference) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      if (c.b * c.h * c.lq * c.lk > 20'000'000) continue;  // masked_batch18: CPU time only, same code path
      const Tensor q = test::random_host({c.b, c.h, c.lq, c.d}, dtype);
      const Tensor k = test::random_host({c.b, c.h, c.lk, c.d}, dtype);
      const Tensor v = test::random_host({c.b, c.h, c.lk, c.d}, dtype);
      const Tensor grad_out = test::random_host(q.shape(), dtype);
      const Tensor bool_mask = c.bool_mask == MaskShape::none ? Tensor() : make_bool_mask(c);
      const Tensor float_mask = c.float_mask == MaskShape::none ? Tensor() : make_float_mask(c, dtype);
      Tensor out = Tensor::empty(q.shape(), DType::f32);
      kernels::cpu::attention(q, k, v, out, c.causal, bool_mask, float_mask, c.scale);
      out = test::representable(out, dtype);  // the saved output as the model would store it
      for (const bool with_out : {true, false}) {
        const std::string what =
            str_cat("attention_backward ", c.name, with_out ? " (out)" : " (no out)", " ", dtype_name(dtype));
        SCOPED_TRACE(what);
        Tensor ref_q = Tensor::empty(q.shape(), DType::f32), ref_k = Tensor::empty(k.shape(), DType::f32),
               ref_v = Tensor::empty(k.shape(), DType::f32);
        kernels::cpu::attention_backward(q, k, v, with_out ? out : Tensor(), grad_out, ref_q, ref_k, ref_v, c.causal,
                                         bool_mask, float_mask, c.scale);
        // NaN poison: where NaN rows are expected the outputs start as zeros, so they must be written.
        const auto output = [&](const Shape& shape) {
          return c.all_masked_row ? Tensor::zeros(shape, dtype, Device::cuda()) : test::poisoned_cuda(shape, dtype);
        };
        Tensor gq = output(q.shape()), gk = output(k.shape()), gv = output(k.shape());
        kernels::attention_backward(test::to_cuda(q, dtype), test::to_cuda(k, dtype), test::to_cuda(v, dtype),
                                    with_out ? test::to_cuda(out, dtype) : Tensor(), test::to_cuda(grad_out, dtype),
                                    gq, gk, gv, c.causal, bool_mask.defined() ? bool_mask.to(Device::cuda()) : Tensor(),
                                    test::to_cuda(float_mask, dtype), c.scale);
        // One key: softmax is constant 1, so grad_q and grad_k are exactly zero, the difference of two terms of
        // grad_out's size (dP - rowsum(dP * P)); both sides hold their rounding only.
        const double floor = c.lk == 1 ? test::l2_norm(grad_out) : 0;
        EXPECT_EQ(expect_rows_close(gq, ref_q, what + " grad_q", floor), c.all_masked_row ? c.b * c.h : 0);
        if (c.all_masked_row) {
          expect_all_nan(gk, what + " grad_k");
          expect_all_nan(gv, what + " grad_v");
        } else {
          test::expect_cuda_close(gk, ref_k, what + " grad_k", 0, floor);
          test::expect_cuda_close(gv, ref_v, what + " grad_v");
        }
      }
    }
  }
}

// Two runs of the backward give the same bits (no atomics).
TEST(AttentionCuda, BackwardIsDeterministic) {
  MFUSER_REQUIRE_CUDA();
  const Shape qs{1, 4, 300, 64}, ks{1, 4, 200, 64};
  for (const DType dtype : test::kCudaDtypes) {
    const auto random_cuda = [&](const Shape& shape) { return test::to_cuda(test::random_host(shape, dtype), dtype); };
    const Tensor q = random_cuda(qs), g = random_cuda(qs), k = random_cuda(ks), v = random_cuda(ks);
    Tensor run[2][3];
    for (auto& r : run) {
      r[0] = Tensor::empty(qs, dtype, Device::cuda());
      r[1] = Tensor::empty(ks, dtype, Device::cuda());
      r[2] = Tensor::empty(ks, dtype, Device::cuda());
      kernels::attention_backward(q, k, v, Tensor(), g, r[0], r[1], r[2]);
    }
    for (int t = 0; t < 3; ++t) {
      const test::ErrorStats e = test::compare(run[0][t], run[1][t]);
      EXPECT_EQ(e.max_abs, 0.0) << "gradient " << t << " " << dtype_name(dtype);
    }
  }
}

TEST(AttentionCuda, BackwardRejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Shape shape{1, 2, 3, 8};
  const Tensor x32 = Tensor::zeros(shape, DType::f32, Device::cuda());
  const Tensor x16 = kernels::cast_to(x32, DType::bf16);
  Tensor g16[3] = {Tensor::empty(shape, DType::bf16, Device::cuda()), Tensor::empty(shape, DType::bf16, Device::cuda()),
                   Tensor::empty(shape, DType::bf16, Device::cuda())};
  Tensor g32 = Tensor::empty(shape, DType::f32, Device::cuda());
  kernels::attention_backward(x16, x16, x16, x16, x16, g16[0], g16[1], g16[2]);  // the valid baseline
  EXPECT_THROW(kernels::attention_backward(x16, x16, x16, x32, x16, g16[0], g16[1], g16[2]), Error);
  EXPECT_THROW(kernels::attention_backward(x16, x16, x16, x16, x32, g16[0], g16[1], g16[2]), Error);
  EXPECT_THROW(kernels::attention_backward(x16, x16, x16, x16, x16, g32, g16[1], g16[2]), Error);
  EXPECT_THROW(kernels::attention_backward(x16, x32, x16, x16, x16, g16[0], g16[1], g16[2]), Error);
  const Tensor wide = Tensor::zeros({1, 1, 3, 136}, DType::f32, Device::cuda());
  Tensor w[3] = {Tensor::empty(wide.shape(), DType::f32, Device::cuda()),
                 Tensor::empty(wide.shape(), DType::f32, Device::cuda()),
                 Tensor::empty(wide.shape(), DType::f32, Device::cuda())};
  EXPECT_THROW(kernels::attention_backward(wide, wide, wide, Tensor(), wide, w[0], w[1], w[2]), Error);
}

TEST(AttentionCuda, RejectsMixedDtypesAndLargeHeads) {
  MFUSER_REQUIRE_CUDA();
  const Shape shape{1, 2, 3, 8};
  const Tensor q32 = Tensor::zeros(shape, DType::f32, Device::cuda());
  const Tensor q16 = kernels::cast_to(q32, DType::bf16);
  Tensor out16 = Tensor::empty(shape, DType::bf16, Device::cuda());
  Tensor out32 = Tensor::empty(shape, DType::f32, Device::cuda());
  kernels::attention(q16, q16, q16, out16);  // the valid baseline
  EXPECT_THROW(kernels::attention(q16, q32, q16, out16), Error);
  EXPECT_THROW(kernels::attention(q16, q16, q16, out32), Error);
  const Tensor f32_mask = Tensor::zeros({1, 1, 3, 3}, DType::f32, Device::cuda());
  EXPECT_THROW(kernels::attention(q16, q16, q16, out16, false, {}, f32_mask), Error);
  const Tensor host_mask = Tensor::zeros({1, 1, 3, 3}, DType::boolean);
  EXPECT_THROW(kernels::attention(q16, q16, q16, out16, false, host_mask), Error);
  const Tensor wide = Tensor::zeros({1, 1, 3, 136}, DType::f32, Device::cuda());
  Tensor wide_out = Tensor::empty({1, 1, 3, 136}, DType::f32, Device::cuda());
  EXPECT_THROW(kernels::attention(wide, wide, wide, wide_out), Error);
}

}  // namespace
}  // namespace mfuser
