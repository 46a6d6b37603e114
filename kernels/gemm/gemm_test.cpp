// gemm and linear: OpenBLAS gemm and the naive triple loop against PyTorch's f64 products (tiny shapes with
// every transpose / alpha / beta / broadcast-batch variant, and the real sizes), OpenBLAS against the naive
// loop on odd shapes, and linear against F.linear at CLIP's in_proj and the pixel decoder FFN sizes.
#include "kernels/gemm/gemm.h"

#include <cmath>
#include <cstdio>

#include "loaders/safetensors.h"
#include "tests/common/counter_random.h"
#include "tests/common/row_blocks.h"
#include "tests/common/test_util.h"

namespace mfuser {
namespace {

using kernels::GemmParams;
using GemmFn = void (*)(const Tensor&, const Tensor&, Tensor&, const GemmParams&);

// gemm cases of gemm_golden.py: `<name>.a`, `.b`, optional `.c` (C before, for beta != 0), `.out`,
// `.params` (m, n, k, trans_a, trans_b, batch, stride_a, stride_b, stride_c), `.scalars` (alpha, beta).
const char* const kTinyCases[] = {"tiny.nn",           "tiny.nt", "tiny.tn", "tiny.tt", "tiny.batch_shared_b",
                                  "tiny.batch_shared_a", "tiny.batch_qk"};

// f32 products accumulated over k terms of size ~1: a few 1e-6 relative to the output's scale.
constexpr double kRelL2 = 1e-5;

class GemmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    golden_ = std::make_unique<SafetensorsReader>(test::golden_path("gemm"));
    seed_trace_ = "golden seed " + golden_->metadata().at("seed");
  }
  // Real-size inputs are stored as f16 (exact in f32).
  Tensor f32(const std::string& name) const { return golden_->load(name, DType::f32); }

  GemmParams params(const std::string& name) const {
    const int64_t* v = golden_->view(name + ".params").data<int64_t>();
    const float* s = golden_->view(name + ".scalars").data<float>();
    return {.m = v[0], .n = v[1], .k = v[2], .trans_a = v[3] != 0, .trans_b = v[4] != 0, .alpha = s[0],
            .beta = s[1], .batch = v[5], .stride_a = v[6], .stride_b = v[7], .stride_c = v[8]};
  }

  // Runs `fn` on a golden case: C starts as the stored C, or poisoned when beta is 0 (C must not be read).
  test::ErrorStats run_case(GemmFn fn, const std::string& name) const {
    const Tensor ref = golden_->view(name + ".out");
    Tensor c = golden_->contains(name + ".c") ? golden_->view(name + ".c").to(Device::cpu())
                                               : Tensor::empty(ref.shape(), DType::f32);
    if (!golden_->contains(name + ".c")) test::poison(c);
    fn(f32(name + ".a"), f32(name + ".b"), c, params(name));
    return test::compare(c, ref);
  }

  std::unique_ptr<SafetensorsReader> golden_;
  std::string seed_trace_;
};

TEST_F(GemmTest, OpenBlasAndNaiveMatchPyTorchTiny) {
  SCOPED_TRACE(seed_trace_);
  const std::pair<const char*, GemmFn> impls[] = {{"openblas", kernels::cpu::gemm},
                                                  {"naive", kernels::cpu::gemm_naive}};
  for (const char* name : kTinyCases) {
    for (const auto& [impl, fn] : impls) {
      SCOPED_TRACE(std::string(name) + " " + impl);
      const test::ErrorStats e = run_case(fn, name);
      std::printf("%s %s: %s\n", name, impl, test::describe(e).c_str());
      EXPECT_EQ(e.nonfinite, 0);
      EXPECT_LE(e.rel_l2, kRelL2);
      EXPECT_LE(e.max_abs, 1e-5);  // |C| < 30
    }
  }
}

TEST_F(GemmTest, OpenBlasMatchesPyTorchAtTokenSize) {
  SCOPED_TRACE(seed_trace_);
  const test::ErrorStats e = run_case(kernels::cpu::gemm, "real.tokens");
  std::printf("real.tokens 2050x1024 @ 1024x1024 openblas: %s\n", test::describe(e).c_str());
  EXPECT_EQ(e.nonfinite, 0);
  EXPECT_LE(e.rel_l2, kRelL2);
  EXPECT_LE(e.max_abs, 1e-4);  // |C| < 30 after 1024 products
}

// Odd sizes (no multiple of a SIMD width), every transpose pair, padded batch strides, alpha and beta.
TEST_F(GemmTest, OpenBlasMatchesNaiveOnOddShapes) {
  MFUSER_SEED_TRACE();
  for (int variant = 0; variant < 8; ++variant) {
    const int64_t m = 37, n = 53, k = 129;
    const bool shared_b = variant & 4;
    const GemmParams p{.m = m, .n = n, .k = k, .trans_a = bool(variant & 1), .trans_b = bool(variant & 2),
                       .alpha = 0.75f, .beta = shared_b ? -1.5f : 0.f, .batch = 3, .stride_a = m * k + 5,
                       .stride_b = shared_b ? 0 : k * n + 3, .stride_c = m * n + 7};
    SCOPED_TRACE(str_cat("trans_a ", p.trans_a, ", trans_b ", p.trans_b, ", beta ", p.beta, ", stride_b ",
                         p.stride_b));
    Tensor a = Tensor::empty({p.batch * p.stride_a}, DType::f32);
    Tensor b = Tensor::empty({p.batch * (k * n + 3)}, DType::f32);
    Tensor c = Tensor::empty({p.batch * p.stride_c}, DType::f32);
    for (Tensor* t : {&a, &b, &c}) test::fill_uniform(*t);
    Tensor blas = c.to(Device::cpu()), naive = c.to(Device::cpu());
    kernels::cpu::gemm(a, b, blas, p);
    kernels::cpu::gemm_naive(a, b, naive, p);
    const test::ErrorStats e = test::compare(blas, naive);
    EXPECT_EQ(e.nonfinite, 0);
    EXPECT_LE(e.rel_l2, 1e-6);
    EXPECT_LE(e.max_abs, 1e-5);  // |C| < 10
  }
}

// k = 0: no products, C = beta * C; with beta = 0 the (NaN) C is overwritten with zeros.
TEST_F(GemmTest, EmptyInnerDimensionScalesC) {
  const Tensor none = Tensor::empty({0}, DType::f32);
  for (float beta : {0.f, 2.f}) {
    const GemmParams p{.m = 2, .n = 3, .k = 0, .beta = beta};
    for (GemmFn fn : {GemmFn(kernels::cpu::gemm), GemmFn(kernels::cpu::gemm_naive)}) {
      Tensor c = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
      if (beta == 0.f) test::poison(c);
      fn(none, none, c, p);
      for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(c.data<float>()[i], beta == 0.f ? 0.f : beta * float(i + 1));
    }
  }
}

TEST_F(GemmTest, RejectsBadArguments) {
  const Tensor a = Tensor::zeros({4, 5}, DType::f32), b = Tensor::zeros({5, 6}, DType::f32);
  Tensor c = Tensor::empty({4, 6}, DType::f32);
  const GemmParams p{.m = 4, .n = 6, .k = 5};
  kernels::gemm(a, b, c, p);  // the valid baseline
  GemmParams too_big = p;
  too_big.k = 6;  // A is 4 x 5
  EXPECT_THROW(kernels::gemm(a, b, c, too_big), Error);
  GemmParams batched = p;
  batched.batch = 2;
  batched.stride_c = 10;  // < 4 x 6: the two C matrices would overlap
  Tensor room_for_two = Tensor::empty({2, 4, 6}, DType::f32);
  EXPECT_THROW(kernels::gemm(a, b, room_for_two, batched), Error);
  GemmParams negative = p;
  negative.stride_a = -1;
  EXPECT_THROW(kernels::gemm(a, b, c, negative), Error);
  Tensor int_c = Tensor::empty({4, 6}, DType::i32);
  EXPECT_THROW(kernels::gemm(a, b, int_c, p), Error);
}

class LinearTest : public GemmTest {
 protected:
  // F.linear on golden case `name` (`.x`, `.weight`, optional `.bias`) into a poisoned output.
  Tensor run_linear(const std::string& name) const {
    const Tensor x = f32(name + ".x"), weight = f32(name + ".weight");
    const Tensor bias = golden_->contains(name + ".bias") ? golden_->view(name + ".bias") : Tensor();
    Shape shape = x.shape();
    shape[-1] = weight.dim(0);
    Tensor y = Tensor::empty(shape, DType::f32);
    test::poison(y);
    kernels::cpu::linear(x, weight, bias, y);
    return y;
  }
};

TEST_F(LinearTest, MatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  for (const char* name : {"linear.tiny_bias", "linear.tiny", "linear.in_proj"}) {
    SCOPED_TRACE(name);
    const test::ErrorStats e = test::compare(run_linear(name), golden_->view(std::string(name) + ".out"));
    std::printf("%s: %s\n", name, test::describe(e).c_str());
    EXPECT_EQ(e.nonfinite, 0);
    EXPECT_LE(e.rel_l2, kRelL2);
    EXPECT_LE(e.max_abs, 1e-4);  // |y| < 40 after up to 1024 products
  }
}

// The pixel decoder FFN, 5376 x 256 @ (2048 x 256)^T + bias; PyTorch's rows are stored in blocks.
TEST_F(LinearTest, PixelDecoderFfnMatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  const test::RowBlockErrors e = test::compare_row_blocks(run_linear("linear.ffn"), *golden_, "linear.ffn");
  EXPECT_EQ(e.nonfinite, 0);
  for (const auto& b : e.blocks) {
    SCOPED_TRACE(str_cat("rows [", b.begin, ", ", b.end, ")"));
    std::printf("linear.ffn rows [%lld, %lld): %s\n", static_cast<long long>(b.begin),
                static_cast<long long>(b.end), test::describe(b.error).c_str());
    EXPECT_LE(b.error.rel_l2, kRelL2);
    EXPECT_LE(b.error.max_abs, 1e-4);
  }
}

TEST_F(LinearTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({2, 3, 5}, DType::f32), weight = Tensor::zeros({4, 5}, DType::f32);
  Tensor y = Tensor::empty({2, 3, 4}, DType::f32);
  kernels::linear(x, weight, Tensor(), y);  // the valid baseline
  EXPECT_THROW(kernels::linear(x, Tensor::zeros({4, 6}, DType::f32), Tensor(), y), Error);
  EXPECT_THROW(kernels::linear(x, weight, Tensor::zeros({5}, DType::f32), y), Error);
  Tensor wrong_y = Tensor::empty({6, 4}, DType::f32);
  EXPECT_THROW(kernels::linear(x, weight, Tensor(), wrong_y), Error);
}

// linear_backward: grad_x, grad_weight, grad_bias against PyTorch's f64 autograd of F.linear.
class LinearBackwardTest : public GemmTest {
 protected:
  struct Grads {
    Tensor x, weight, bias;
  };
  // All three gradients of `x` @ `weight`^T + b for upstream `grad_y`, each output poisoned first.
  static Grads run(const Tensor& x, const Tensor& weight, const Tensor& grad_y) {
    Grads g{Tensor::empty(x.shape(), DType::f32), Tensor::empty(weight.shape(), DType::f32),
            Tensor::empty({weight.dim(0)}, DType::f32)};
    for (Tensor* t : {&g.x, &g.weight, &g.bias}) test::poison(*t);
    kernels::cpu::linear_backward(x, weight, grad_y, g.x, g.weight, g.bias);
    return g;
  }
  static void expect_close(const Tensor& out, const Tensor& ref, const std::string& what, double max_abs) {
    const test::ErrorStats e = test::compare(out, ref);
    std::printf("%s: %s\n", what.c_str(), test::describe(e).c_str());
    EXPECT_EQ(e.nonfinite, 0) << what;
    EXPECT_LE(e.rel_l2, kRelL2) << what;
    EXPECT_LE(e.max_abs, max_abs) << what;
  }
};

TEST_F(LinearBackwardTest, TinyMatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  for (const std::string name : {"linear.tiny_bias", "linear.tiny"}) {
    SCOPED_TRACE(name);
    const Grads g = run(f32(name + ".x"), f32(name + ".weight"), golden_->view(name + ".grad_y"));
    // |grad| < 20 after at most 6 products of N(0, 1) values: an f32 ulp or two.
    expect_close(g.x, golden_->view(name + ".grad_x"), name + " grad_x", 1e-5);
    expect_close(g.weight, golden_->view(name + ".grad_weight"), name + " grad_weight", 1e-5);
    expect_close(g.bias, golden_->view(name + ".grad_bias"), name + " grad_bias", 1e-5);
  }
}

// The real sizes: upstream gradients recomputed from the counter formula the golden generator used.
TEST_F(LinearBackwardTest, RealSizesMatchPyTorch) {
  SCOPED_TRACE(seed_trace_);
  const std::pair<std::string, std::pair<std::string, std::string>> cases[] = {
      {"backward.tokens", {"real.tokens.a", "real.tokens.b"}}, {"backward.ffn", {"linear.ffn.x", "linear.ffn.weight"}}};
  uint32_t salt = 1;
  for (const auto& [name, inputs] : cases) {
    SCOPED_TRACE(name);
    const Tensor x = f32(inputs.first), weight = f32(inputs.second);
    const Grads g = run(x, weight, test::counter_uniform({x.dim(0), weight.dim(0)}, salt++));
    const test::RowBlockErrors e = test::compare_row_blocks(g.x, *golden_, name + ".grad_x");
    EXPECT_EQ(e.nonfinite, 0);
    for (const auto& b : e.blocks) {
      std::printf("%s grad_x rows [%lld, %lld): %s\n", name.c_str(), static_cast<long long>(b.begin),
                  static_cast<long long>(b.end), test::describe(b.error).c_str());
      EXPECT_LE(b.error.rel_l2, kRelL2);
      EXPECT_LE(b.error.max_abs, 2e-5);  // |grad_x| < 10 after up to 2048 products
    }
    // Sums over all 2050 resp. 5376 rows: |grad_weight| < 300, |grad_bias| < 100.
    expect_close(g.weight, golden_->view(name + ".grad_weight"), name + " grad_weight", 2e-4);
    expect_close(g.bias, golden_->view(name + ".grad_bias"), name + " grad_bias", 1e-5);
  }
}

// Unwanted gradients (undefined tensors) are skipped; x is not needed without grad_weight.
TEST_F(LinearBackwardTest, SkipsUnwantedGradients) {
  SCOPED_TRACE(seed_trace_);
  const std::string name = "linear.tiny_bias";
  const Tensor x = f32(name + ".x"), weight = f32(name + ".weight"), grad_y = golden_->view(name + ".grad_y");
  Tensor grad_x = Tensor::empty(x.shape(), DType::f32), none;
  test::poison(grad_x);
  kernels::linear_backward(Tensor(), weight, grad_y, grad_x, none, none);
  EXPECT_LE(test::compare(grad_x, golden_->view(name + ".grad_x")).max_abs, 1e-5);
  Tensor grad_bias = Tensor::empty({weight.dim(0)}, DType::f32);
  test::poison(grad_bias);
  kernels::linear_backward(Tensor(), weight, grad_y, none, none, grad_bias);
  EXPECT_LE(test::compare(grad_bias, golden_->view(name + ".grad_bias")).max_abs, 1e-5);
  Tensor grad_weight = Tensor::empty(weight.shape(), DType::f32);
  test::poison(grad_weight);
  kernels::linear_backward(x, weight, grad_y, none, grad_weight, none);
  EXPECT_LE(test::compare(grad_weight, golden_->view(name + ".grad_weight")).max_abs, 1e-5);
}

TEST_F(LinearBackwardTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({2, 3, 5}, DType::f32), weight = Tensor::zeros({4, 5}, DType::f32);
  const Tensor grad_y = Tensor::zeros({2, 3, 4}, DType::f32);
  Tensor grad_x = Tensor::empty({2, 3, 5}, DType::f32), grad_w = Tensor::empty({4, 5}, DType::f32);
  Tensor grad_b = Tensor::empty({4}, DType::f32), none;
  kernels::linear_backward(x, weight, grad_y, grad_x, grad_w, grad_b);  // the valid baseline
  EXPECT_THROW(kernels::linear_backward(Tensor(), weight, grad_y, grad_x, grad_w, grad_b), Error);  // no x
  EXPECT_THROW(kernels::linear_backward(x, weight, Tensor::zeros({2, 3, 5}, DType::f32), grad_x, grad_w, grad_b),
               Error);
  EXPECT_THROW(kernels::linear_backward(x, Tensor::zeros({4, 6}, DType::f32), grad_y, grad_x, none, none), Error);
  Tensor wrong_x_grad = Tensor::empty({6, 5}, DType::f32), wrong_b = Tensor::empty({5}, DType::f32);
  EXPECT_THROW(kernels::linear_backward(x, weight, grad_y, wrong_x_grad, none, none), Error);
  EXPECT_THROW(kernels::linear_backward(x, weight, grad_y, none, none, wrong_b), Error);
  Tensor int_w = Tensor::empty({4, 5}, DType::i32);
  EXPECT_THROW(kernels::linear_backward(x, weight, grad_y, none, int_w, none), Error);
  EXPECT_THROW(kernels::linear_backward(Tensor::zeros({3, 2, 5}, DType::f32), weight, grad_y, none, grad_w, none),
               Error);  // x's leading dims differ from grad_y's
}

}  // namespace
}  // namespace mfuser
