// gemm and linear: OpenBLAS gemm and the naive triple loop against PyTorch's f64 products (tiny shapes with
// every transpose / alpha / beta / broadcast-batch variant, and the real sizes), OpenBLAS against the naive
// loop on odd shapes, and linear against F.linear at CLIP's in_proj and the pixel decoder FFN sizes.
#include "kernels/gemm/gemm.h"

#include <cmath>
#include <cstdio>

#include "loaders/safetensors.h"
#include "tests/common/counter_random.h"
#include "tests/common/cuda_test.h"
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

// ---- CUDA (cuBLASLt) against the OpenBLAS reference on the same inputs, rounded to the storage dtype ----
// The reference accumulates bf16-representable inputs in f32 like the kernel, so the bf16 error measured is
// the output rounding (~2^-9 relative); f32 has no TF32 and stays within a few 1e-7.

// A CUDA copy of host f32 `host` in `dtype` that starts `offset` elements into a larger buffer: offset 1
// gives the 4-byte (f32) / 2-byte (bf16) aligned views that row slices of odd widths produce.
Tensor cuda_view_at(const Tensor& host, DType dtype, int64_t offset) {
  if (offset == 0) return test::to_cuda(host, dtype);
  Tensor padded = Tensor::zeros({host.numel() + offset}, DType::f32);
  padded.reshape({host.numel() + offset, 1}).slice_rows(offset, offset + host.numel()).copy_from(
      host.reshape({host.numel(), 1}));
  return test::to_cuda(padded, dtype).reshape({host.numel() + offset, 1}).slice_rows(offset, offset + host.numel())
      .reshape(host.shape());
}

// A poisoned CUDA tensor of `shape` starting `offset` elements into a larger buffer.
Tensor poisoned_cuda_at(const Shape& shape, DType dtype, int64_t offset) {
  const int64_t n = shape.numel();
  return test::poisoned_cuda({n + offset, 1}, dtype).slice_rows(offset, offset + n).reshape(shape);
}

struct CudaGemmCase {
  std::string name;
  GemmParams p;
  int64_t offset = 0;  // element offset of A, B and C in their device buffers
};

// One gemm on flat buffers holding the whole batch. C starts poisoned when beta == 0 and its matrices tile
// it (beta == 0 must not read C); otherwise from random values, which padding between matrices keeps.
void expect_gemm_matches_cpu(const CudaGemmCase& c, DType dtype) {
  const GemmParams& p = c.p;
  SCOPED_TRACE(c.name);
  const auto elements = [&](int64_t stride, int64_t size) { return (p.batch - 1) * stride + size; };
  const Tensor a = test::random_host({elements(p.stride_a, p.m * p.k)}, dtype);
  const Tensor b = test::random_host({elements(p.stride_b, p.k * p.n)}, dtype);
  const Tensor c_before = test::random_host({elements(p.stride_c, p.m * p.n)}, dtype);
  Tensor ref = c_before.to(Device::cpu());
  kernels::cpu::gemm(a, b, ref, p);
  const bool dense_c = p.batch == 1 || p.stride_c == p.m * p.n;
  Tensor out = p.beta == 0.f && dense_c ? poisoned_cuda_at(c_before.shape(), dtype, c.offset)
                                        : cuda_view_at(c_before, dtype, c.offset);
  kernels::gemm(cuda_view_at(a, dtype, c.offset), cuda_view_at(b, dtype, c.offset), out, p);
  test::expect_cuda_close(out, ref, c.name);
}

// linear at [rows, k] -> [rows, n] against cpu::linear; run twice (the second call takes the cached plan).
void expect_linear_matches_cpu(const std::string& name, int64_t rows, int64_t k, int64_t n, bool with_bias,
                               DType dtype, int64_t offset = 0) {
  SCOPED_TRACE(name);
  const Tensor x = test::random_host({rows, k}, dtype), weight = test::random_host({n, k}, dtype);
  const Tensor bias = with_bias ? test::random_host({n}, dtype) : Tensor();
  Tensor ref = Tensor::empty({rows, n}, DType::f32);
  kernels::cpu::linear(x, weight, bias, ref);
  const Tensor x_cuda = cuda_view_at(x, dtype, offset), weight_cuda = test::to_cuda(weight, dtype);
  const Tensor bias_cuda = with_bias ? cuda_view_at(bias, dtype, offset) : Tensor();
  Tensor y = poisoned_cuda_at({rows, n}, dtype, offset);
  for (int run = 0; run < 2; ++run) {
    if (run) test::poison(y);
    kernels::linear(x_cuda, weight_cuda, bias_cuda, y);
    test::expect_cuda_close(y, ref, str_cat(name, run ? " (cached plan)" : ""));
  }
}

// The ViT-L linears (1025 tokens x 1024 channels): qkv in_proj, MLP fc1 and fc2, with bias; a bias-free one.
TEST(LinearCuda, MatchesCpuAtModelShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (DType dtype : test::kCudaDtypes) {
    expect_linear_matches_cpu("qkv 1025x1024 -> 3072", 1025, 1024, 3072, true, dtype);
    expect_linear_matches_cpu("fc1 1025x1024 -> 4096", 1025, 1024, 4096, true, dtype);
    expect_linear_matches_cpu("fc2 1025x4096 -> 1024", 1025, 4096, 1024, true, dtype);
    expect_linear_matches_cpu("no bias 1025x1024 -> 256", 1025, 1024, 256, false, dtype);
  }
}

// Odd sizes (no multiple of any tile or vector width), and x / bias / y views one element into their buffers.
TEST(LinearCuda, MatchesCpuAtOddShapesAndUnalignedViews) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (DType dtype : test::kCudaDtypes) {
    expect_linear_matches_cpu("7x5 -> 13 bias", 7, 5, 13, true, dtype);
    expect_linear_matches_cpu("1x3 -> 1 no bias", 1, 3, 1, false, dtype);
    expect_linear_matches_cpu("unaligned 1025x64 -> 192 bias", 1025, 64, 192, true, dtype, 1);
    expect_linear_matches_cpu("unaligned 33x7 -> 9 bias", 33, 7, 9, true, dtype, 1);
    expect_linear_matches_cpu("unaligned 33x7 -> 9", 33, 7, 9, false, dtype, 1);
  }
}

// Attention's batched products at 16 heads x 1025 tokens x 64: Q K^T * 1/8 (trans_b, alpha) and P V.
TEST(GemmCuda, MatchesCpuOnAttentionBatches) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const int64_t heads = 16, tokens = 1025, dim = 64;
  const CudaGemmCase cases[] = {
      {"q k^T", {.m = tokens, .n = tokens, .k = dim, .trans_b = true, .alpha = 0.125f, .batch = heads,
                 .stride_a = tokens * dim, .stride_b = tokens * dim, .stride_c = tokens * tokens}},
      {"p v", {.m = tokens, .n = dim, .k = tokens, .batch = heads, .stride_a = tokens * tokens,
               .stride_b = tokens * dim, .stride_c = tokens * dim}},
  };
  for (DType dtype : test::kCudaDtypes)
    for (const CudaGemmCase& c : cases) expect_gemm_matches_cpu(c, dtype);
}

// Every transpose pair at odd sizes; a weight broadcast over the batch (stride 0); padded batch strides;
// beta != 0 accumulation; views at 1-element offsets (4- resp. 2-byte aligned).
TEST(GemmCuda, MatchesCpuOnOddShapesAndEveryOption) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  std::vector<CudaGemmCase> cases;
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 1, tb = t & 2;
    const std::string flags = str_cat(" trans_a ", ta, " trans_b ", tb);
    cases.push_back({"7x13x5" + flags, {.m = 7, .n = 13, .k = 5, .trans_a = ta, .trans_b = tb}});
    cases.push_back({"37x53x129 batch 3 padded, beta -1.5" + flags,
                     {.m = 37, .n = 53, .k = 129, .trans_a = ta, .trans_b = tb, .alpha = 0.75f, .beta = -1.5f,
                      .batch = 3, .stride_a = 37 * 129 + 5, .stride_b = 129 * 53 + 3, .stride_c = 37 * 53 + 7}});
    cases.push_back({"7x13x5 unaligned views" + flags,
                     {.m = 7, .n = 13, .k = 5, .trans_a = ta, .trans_b = tb}, 1});
  }
  cases.push_back({"shared weight: batch 4 of 1025x1024 @ 1024x256",
                   {.m = 1025, .n = 256, .k = 1024, .batch = 4, .stride_a = 1025 * 1024, .stride_b = 0,
                    .stride_c = 1025 * 256}});
  cases.push_back({"shared left operand, trans_b, beta 1",
                   {.m = 64, .n = 100, .k = 33, .trans_b = true, .beta = 1.f, .batch = 5, .stride_a = 0,
                    .stride_b = 100 * 33, .stride_c = 64 * 100}});
  cases.push_back({"trans_a 1024x1025 -> 1025x300",
                   {.m = 1025, .n = 300, .k = 1024, .trans_a = true}});
  cases.push_back({"unaligned batch 3 of 17x19x23, beta 0.5",
                   {.m = 17, .n = 19, .k = 23, .beta = 0.5f, .batch = 3, .stride_a = 17 * 23, .stride_b = 23 * 19,
                    .stride_c = 17 * 19}, 1});
  cases.push_back({"unaligned qkv-like slice 1025x64 @ (64x64)^T",
                   {.m = 1025, .n = 64, .k = 64, .trans_b = true}, 3});
  for (DType dtype : test::kCudaDtypes)
    for (const CudaGemmCase& c : cases) expect_gemm_matches_cpu(c, dtype);
}

// k == 0: no products, C = beta * C (beta 0 overwrites a NaN C with zeros); empty m or n writes nothing.
TEST(GemmCuda, EmptyInnerDimensionScalesC) {
  MFUSER_REQUIRE_CUDA();
  for (DType dtype : test::kCudaDtypes) {
    const Tensor none = test::poisoned_cuda({8}, dtype);  // operands holding no needed element are not read
    for (float beta : {0.f, 2.f}) {
      const Tensor before = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
      Tensor c = beta == 0.f ? test::poisoned_cuda({2, 3}, dtype) : test::to_cuda(before, dtype);
      kernels::gemm(none, none, c, {.m = 2, .n = 3, .k = 0, .beta = beta});
      Tensor ref = before.to(Device::cpu());
      for (int64_t i = 0; i < 6; ++i) ref.data<float>()[i] = beta * float(i + 1);
      test::expect_cuda_close(c, ref, str_cat("k = 0, beta ", beta));
    }
    Tensor untouched = test::to_cuda(Tensor::from_vector<float>({1, 2}, {2}), dtype);
    kernels::gemm(none, none, untouched, {.m = 0, .n = 2, .k = 4});
    test::expect_cuda_close(untouched, Tensor::from_vector<float>({1, 2}, {2}), "m = 0");
  }
}

TEST(GemmCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor a32 = test::to_cuda(Tensor::zeros({4, 5}, DType::f32), DType::f32);
  const Tensor a16 = test::to_cuda(Tensor::zeros({4, 5}, DType::f32), DType::bf16);
  const Tensor b16 = test::to_cuda(Tensor::zeros({5, 6}, DType::f32), DType::bf16);
  Tensor c16 = test::poisoned_cuda({4, 6}, DType::bf16), c32 = test::poisoned_cuda({4, 6}, DType::f32);
  const GemmParams p{.m = 4, .n = 6, .k = 5};
  kernels::gemm(a16, b16, c16, p);  // the valid baseline
  EXPECT_THROW(kernels::gemm(a32, b16, c16, p), Error);
  EXPECT_THROW(kernels::gemm(a16, b16, c32, p), Error);
  Tensor cpu_bf16 = Tensor::zeros({4, 6}, DType::bf16);
  EXPECT_THROW(kernels::gemm(Tensor::zeros({4, 5}, DType::bf16), Tensor::zeros({5, 6}, DType::bf16), cpu_bf16, p),
               Error);
  // linear: f32 weights (or bias) with bf16 activations are refused; cast the weights once instead.
  const Tensor w32 = test::to_cuda(Tensor::zeros({6, 5}, DType::f32), DType::f32);
  const Tensor w16 = test::to_cuda(Tensor::zeros({6, 5}, DType::f32), DType::bf16);
  const Tensor bias32 = test::to_cuda(Tensor::zeros({6}, DType::f32), DType::f32);
  kernels::linear(a16, w16, Tensor(), c16);  // the valid baseline
  EXPECT_THROW(kernels::linear(a16, w32, Tensor(), c16), Error);
  EXPECT_THROW(kernels::linear(a16, w16, bias32, c16), Error);
}

// ---- linear_backward on CUDA against cpu::linear_backward, every combination of wanted gradients ----
// grad_bias sums up to 5376 rows in f32 (per-chunk partials): its relative L2 stays ~1e-6, well inside 1e-4.
void expect_linear_backward_matches_cpu(const std::string& name, const Shape& x_shape, int64_t n, DType dtype) {
  SCOPED_TRACE(name);
  const int64_t k = x_shape[-1];
  Shape y_shape = x_shape;
  y_shape[-1] = n;
  const Tensor x = test::random_host(x_shape, dtype), weight = test::random_host({n, k}, dtype);
  const Tensor grad_y = test::random_host(y_shape, dtype);
  Tensor ref_x = Tensor::empty(x_shape, DType::f32), ref_w = Tensor::empty({n, k}, DType::f32);
  Tensor ref_b = Tensor::empty({n}, DType::f32);
  kernels::cpu::linear_backward(x, weight, grad_y, ref_x, ref_w, ref_b);
  const Tensor x_cuda = test::to_cuda(x, dtype), w_cuda = test::to_cuda(weight, dtype);
  const Tensor gy_cuda = test::to_cuda(grad_y, dtype);
  for (int wanted = 1; wanted < 8; ++wanted) {  // bit 0: grad_x, 1: grad_weight, 2: grad_bias
    Tensor gx = wanted & 1 ? test::poisoned_cuda(x_shape, dtype) : Tensor();
    Tensor gw = wanted & 2 ? test::poisoned_cuda({n, k}, dtype) : Tensor();
    Tensor gb = wanted & 4 ? test::poisoned_cuda({n}, dtype) : Tensor();
    // x is only passed when grad_weight needs it (a frozen weight does not keep its input alive).
    kernels::linear_backward(wanted & 2 ? x_cuda : Tensor(), w_cuda, gy_cuda, gx, gw, gb);
    const std::string what = str_cat(name, " wanted ", wanted);
    if (gx.defined()) test::expect_cuda_close(gx, ref_x, what + " grad_x");
    if (gw.defined()) test::expect_cuda_close(gw, ref_w, what + " grad_weight");
    if (gb.defined()) test::expect_cuda_close(gb, ref_b, what + " grad_bias");
  }
}

// ViT-L's linears at 1025 tokens (qkv, fc2), the pixel decoder FFN's 5376 rows, odd and tiny shapes.
TEST(LinearBackwardCuda, MatchesCpuForEveryWantedGradient) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (DType dtype : test::kCudaDtypes) {
    expect_linear_backward_matches_cpu("qkv 1025x1024 -> 3072", {1025, 1024}, 3072, dtype);
    expect_linear_backward_matches_cpu("fc2 1025x4096 -> 1024", {1025, 4096}, 1024, dtype);
    expect_linear_backward_matches_cpu("ffn 5376x256 -> 1024", {5376, 256}, 1024, dtype);
    expect_linear_backward_matches_cpu("odd [2, 3, 5] -> 13", {2, 3, 5}, 13, dtype);
    expect_linear_backward_matches_cpu("odd 300x7 -> 33", {300, 7}, 33, dtype);
    expect_linear_backward_matches_cpu("tiny 1x3 -> 1", {1, 3}, 1, dtype);
  }
}

// grad_bias has no float atomics: two runs give the same bits.
TEST(LinearBackwardCuda, GradBiasIsDeterministic) {
  MFUSER_REQUIRE_CUDA();
  for (DType dtype : test::kCudaDtypes) {
    const Tensor w = test::to_cuda(test::random_host({1024, 64}, dtype), dtype);
    const Tensor gy = test::to_cuda(test::random_host({5376, 1024}, dtype), dtype);
    Tensor first = test::poisoned_cuda({1024}, dtype), second = test::poisoned_cuda({1024}, dtype), none;
    kernels::linear_backward(Tensor(), w, gy, none, none, first);
    kernels::linear_backward(Tensor(), w, gy, none, none, second);
    EXPECT_EQ(test::compare(first, second).max_abs, 0.0);
  }
}

TEST(LinearBackwardCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor x16 = test::to_cuda(Tensor::zeros({3, 5}, DType::f32), DType::bf16);
  const Tensor w16 = test::to_cuda(Tensor::zeros({4, 5}, DType::f32), DType::bf16);
  const Tensor w32 = test::to_cuda(Tensor::zeros({4, 5}, DType::f32), DType::f32);
  const Tensor gy16 = test::to_cuda(Tensor::zeros({3, 4}, DType::f32), DType::bf16);
  Tensor gx16 = test::poisoned_cuda({3, 5}, DType::bf16), gx32 = test::poisoned_cuda({3, 5}, DType::f32), none;
  kernels::linear_backward(x16, w16, gy16, gx16, none, none);  // the valid baseline
  EXPECT_THROW(kernels::linear_backward(x16, w32, gy16, gx16, none, none), Error);
  EXPECT_THROW(kernels::linear_backward(x16, w16, gy16, gx32, none, none), Error);
  Tensor gb32 = test::poisoned_cuda({4}, DType::f32);
  EXPECT_THROW(kernels::linear_backward(x16, w16, gy16, none, none, gb32), Error);
}

}  // namespace
}  // namespace mfuser
