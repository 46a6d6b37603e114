// elementwise: add / mul bit-exact against PyTorch over every broadcast pattern; scale within fp32 rounding.
#include "kernels/elementwise/elementwise.h"

#include <cstdio>
#include <tuple>

#include "loaders/safetensors.h"
#include "tests/common/cuda_test.h"
#include "tests/common/test_util.h"

namespace mfuser {
namespace {

// Names of the add/mul cases in elementwise_golden.py.
const char* const kBinaryCases[] = {"tiny.same", "tiny.bias",   "tiny.column", "tiny.middle",
                                    "tiny.lead", "tiny.scalar", "real.bias"};

class ElementwiseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    golden_ = std::make_unique<SafetensorsReader>(test::golden_path("elementwise"));
    seed_trace_ = "golden seed " + golden_->metadata().at("seed");
  }
  // Inputs may be stored as f16 (exact in f32) to keep the file small.
  Tensor f32(const std::string& name) const { return golden_->load(name, DType::f32); }
  float scalar(const std::string& name) const { return golden_->view(name).data<float>()[0]; }

  std::unique_ptr<SafetensorsReader> golden_;
  std::string seed_trace_;
};

using BinaryFn = void (*)(const Tensor&, const Tensor&, Tensor&);

// IEEE f32 add and mul are correctly rounded, and rounding PyTorch's f64 result to f32 gives the same value
// (f64 carries more than 2 x 24 + 2 bits), so the reference must match bit for bit.
TEST_F(ElementwiseTest, AddMulMatchPyTorchBitExact) {
  SCOPED_TRACE(seed_trace_);
  const std::pair<const char*, BinaryFn> ops[] = {{"add", kernels::cpu::add}, {"mul", kernels::cpu::mul}};
  for (const char* name : kBinaryCases) {
    const std::string c = name;
    const Tensor a = f32(c + ".a"), b = f32(c + ".b");
    for (const auto& [op, fn] : ops) {
      SCOPED_TRACE(c + " " + op + ": " + a.shape().str() + " with " + b.shape().str());
      Tensor out = Tensor::empty(a.shape(), DType::f32);
      test::poison(out);
      fn(a, b, out);
      const test::ErrorStats e = test::compare(out, golden_->view(c + "." + op));
      std::printf("%s %s: %s\n", c.c_str(), op, test::describe(e).c_str());
      EXPECT_EQ(e.nonfinite, 0);
      EXPECT_EQ(e.max_abs, 0.0);
    }
  }
}

TEST_F(ElementwiseTest, InPlaceAddOverwritesFirstOperand) {
  SCOPED_TRACE(seed_trace_);
  Tensor a = f32("tiny.bias.a");
  kernels::add(a, f32("tiny.bias.b"), a);
  EXPECT_EQ(test::compare(a, golden_->view("tiny.bias.add")).max_abs, 0.0);
}

// x * factor + bias rounds twice in f32 and once in PyTorch's f64: at most an ulp or two apart.
TEST_F(ElementwiseTest, ScaleMatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  const Tensor x = golden_->view("scale.x");
  for (const char* name : {"plain", "affine"}) {
    const std::string c = std::string("scale.") + name;
    SCOPED_TRACE(c);
    Tensor out = Tensor::empty(x.shape(), DType::f32);
    test::poison(out);
    kernels::scale(x, out, scalar(c + ".factor"), scalar(c + ".bias"));
    const test::ErrorStats e = test::compare(out, golden_->view(c + ".out"));
    std::printf("%s: %s\n", c.c_str(), test::describe(e).c_str());
    EXPECT_EQ(e.nonfinite, 0);
    EXPECT_LE(e.rel_l2, 1e-7);
    EXPECT_LE(e.max_abs, 1e-5);  // |out| < 100
  }
}

// add/mul backward against PyTorch's f64 autograd. grad_a (a copy, resp. one correctly rounded product) must
// be bit exact; grad_b sums over the broadcast dims in f64 and rounds once: within an ulp or so.
TEST_F(ElementwiseTest, AddMulBackwardMatchPyTorch) {
  SCOPED_TRACE(seed_trace_);
  for (const char* name : kBinaryCases) {
    const std::string c = name;
    const Tensor a = f32(c + ".a"), b = f32(c + ".b"), grad_out = f32(c + ".grad_out");
    for (const std::string op : {"add", "mul"}) {
      SCOPED_TRACE(c + " " + op + ": " + a.shape().str() + " with " + b.shape().str());
      Tensor grad_a = Tensor::empty(a.shape(), DType::f32), grad_b = Tensor::empty(b.shape(), DType::f32);
      test::poison(grad_a);
      test::poison(grad_b);
      if (op == "add")
        kernels::cpu::add_backward(grad_out, grad_a, grad_b);
      else
        kernels::cpu::mul_backward(a, b, grad_out, grad_a, grad_b);
      const test::ErrorStats ea = test::compare(grad_a, golden_->view(c + "." + op + ".grad_a"));
      const test::ErrorStats eb = test::compare(grad_b, golden_->view(c + "." + op + ".grad_b"));
      std::printf("%s %s grad_a: %s; grad_b: %s\n", c.c_str(), op.c_str(), test::describe(ea).c_str(),
                  test::describe(eb).c_str());
      EXPECT_EQ(ea.nonfinite + eb.nonfinite, 0);
      EXPECT_EQ(ea.max_abs, 0.0);
      EXPECT_LE(eb.rel_l2, 1e-6);
      EXPECT_LE(eb.max_abs, 1e-5);  // sums of up to 2050 products of N(0, 1) values: |grad_b| < 300
    }
  }
}

// Unwanted gradients are skipped; grad_a may overwrite grad_out (mul reads grad_out for grad_b first).
TEST_F(ElementwiseTest, BackwardSkipsUnwantedAndRunsInPlace) {
  SCOPED_TRACE(seed_trace_);
  const std::string c = "tiny.middle";
  const Tensor a = f32(c + ".a"), b = f32(c + ".b");
  Tensor grad = f32(c + ".grad_out"), grad_b = Tensor::empty(b.shape(), DType::f32), none;
  test::poison(grad_b);
  kernels::mul_backward(a, b, grad, grad, grad_b);
  EXPECT_EQ(test::compare(grad, golden_->view(c + ".mul.grad_a")).max_abs, 0.0);
  EXPECT_LE(test::compare(grad_b, golden_->view(c + ".mul.grad_b")).max_abs, 1e-5);
  test::poison(grad_b);
  kernels::add_backward(f32(c + ".grad_out"), none, grad_b);
  EXPECT_LE(test::compare(grad_b, golden_->view(c + ".add.grad_b")).max_abs, 1e-5);
}

// grad_x = grad_out * factor: one rounding, but of the f32 factor (PyTorch's is the f64 one): an ulp apart.
TEST_F(ElementwiseTest, ScaleBackwardMatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  const Tensor grad_out = golden_->view("scale.grad_out");
  for (const char* name : {"plain", "affine"}) {
    const std::string c = std::string("scale.") + name;
    Tensor grad_x = Tensor::empty(grad_out.shape(), DType::f32);
    test::poison(grad_x);
    kernels::scale_backward(grad_out, grad_x, scalar(c + ".factor"));
    const test::ErrorStats e = test::compare(grad_x, golden_->view(c + ".grad_x"));
    std::printf("%s grad_x: %s\n", c.c_str(), test::describe(e).c_str());
    EXPECT_EQ(e.nonfinite, 0);
    EXPECT_LE(e.rel_l2, 1e-7) << c;
    EXPECT_LE(e.max_abs, 1e-6) << c;  // |grad_x| < 10
  }
}

TEST_F(ElementwiseTest, BackwardRejectsBadArguments) {
  const Tensor a = Tensor::zeros({4, 5, 6}, DType::f32), b = Tensor::zeros({5, 1}, DType::f32);
  const Tensor grad_out = Tensor::zeros({4, 5, 6}, DType::f32);
  Tensor grad_a = Tensor::empty({4, 5, 6}, DType::f32), grad_b = Tensor::empty({5, 1}, DType::f32), none;
  kernels::mul_backward(a, b, grad_out, grad_a, grad_b);  // the valid baseline
  Tensor wrong_b = Tensor::empty({5, 2}, DType::f32), wrong_a = Tensor::empty({4, 5}, DType::f32);
  EXPECT_THROW(kernels::add_backward(grad_out, none, wrong_b), Error);
  EXPECT_THROW(kernels::add_backward(grad_out, wrong_a, none), Error);
  Tensor other_b = Tensor::empty({1, 6}, DType::f32);  // broadcasts, but is not b's shape
  EXPECT_THROW(kernels::mul_backward(a, b, grad_out, none, other_b), Error);
  EXPECT_THROW(kernels::mul_backward(Tensor(), b, grad_out, grad_a, none), Error);
  EXPECT_THROW(kernels::mul_backward(a, b, Tensor::zeros({4, 5, 7}, DType::f32), grad_a, none), Error);
  Tensor int_grad = Tensor::empty({4, 5, 6}, DType::i32);
  EXPECT_THROW(kernels::scale_backward(grad_out, int_grad, 2.f), Error);
}

TEST_F(ElementwiseTest, RejectsBadArguments) {
  const Tensor a = Tensor::zeros({4, 5, 6}, DType::f32);
  Tensor out = Tensor::empty({4, 5, 6}, DType::f32);
  for (const Shape& bad : {Shape{7}, Shape{5, 2}, Shape{2, 4, 5, 6}})
    EXPECT_THROW(kernels::add(a, Tensor::zeros(bad, DType::f32), out), Error) << bad.str();
  Tensor wrong_out = Tensor::empty({4, 5}, DType::f32);
  EXPECT_THROW(kernels::mul(a, a, wrong_out), Error);
  EXPECT_THROW(kernels::mul(a, Tensor::zeros({6}, DType::i32), out), Error);
  Tensor int_out = Tensor::empty({4, 5, 6}, DType::i32);
  EXPECT_THROW(kernels::scale(a, int_out, 2.f), Error);
}

// ---- CUDA against the CPU reference on the same inputs (rounded to the storage dtype) ----

// A CUDA copy of host f32 `host` in `dtype`, one element into a larger buffer: not 16-byte aligned, so the
// kernels must take their scalar path even where the sizes would allow vectors.
Tensor unaligned_cuda(const Tensor& host, DType dtype) {
  const int64_t n = host.numel();
  Tensor padded = Tensor::zeros({n + 1, 1}, DType::f32);
  padded.slice_rows(1, n + 1).copy_from(host.reshape({n, 1}));
  return test::to_cuda(padded, dtype).slice_rows(1, n + 1).reshape(host.shape());
}

enum class Placement { fresh_output, in_place, unaligned_a };

// add and mul of `a_shape` and `b_shape` on CUDA against cpu::add / cpu::mul. In f32 one IEEE operation is
// correctly rounded on both sides, so the results must agree bit for bit; bf16 adds one output rounding.
void expect_binary_matches_cpu(const Shape& a_shape, const Shape& b_shape, DType dtype, Placement placement) {
  const std::tuple<const char*, BinaryFn, BinaryFn> ops[] = {{"add", kernels::add, kernels::cpu::add},
                                                            {"mul", kernels::mul, kernels::cpu::mul}};
  const Tensor a = test::random_host(a_shape, dtype), b = test::random_host(b_shape, dtype);
  for (const auto& [name, fn, cpu_fn] : ops) {
    const std::string what = str_cat(name, " ", a_shape.str(), " and ", b_shape.str(),
                                     placement == Placement::in_place      ? " in place"
                                     : placement == Placement::unaligned_a ? " unaligned"
                                                                           : "");
    Tensor ref = Tensor::empty(a_shape, DType::f32);
    cpu_fn(a, b, ref);
    Tensor a_cuda = placement == Placement::unaligned_a ? unaligned_cuda(a, dtype) : test::to_cuda(a, dtype);
    Tensor out = placement == Placement::in_place ? a_cuda : test::poisoned_cuda(a_shape, dtype);
    fn(a_cuda, test::to_cuda(b, dtype), out);
    test::expect_cuda_close(out, ref, what);
    if (dtype == DType::f32) {
      EXPECT_EQ(test::compare(out, ref).max_abs, 0.0) << what;
    }
  }
}

// The model's broadcasts: a bias / scale per channel on NCHW maps ([B, C, H, W] with [C, 1, 1]), per channel
// on token rows ([L, C] with [C]), equal shapes, a scalar, a middle and a leading broadcast; each with sizes
// that allow 16-byte vectors and odd ones that do not.
TEST(ElementwiseCuda, AddMulMatchCpuOnEveryBroadcast) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const std::pair<Shape, Shape> cases[] = {
      {{2, 1024, 32, 32}, {1024, 1, 1}}, {{2, 256, 7, 9}, {256, 1, 1}}, {{1025, 1024}, {1024}},
      {{1025, 1023}, {1023}},            {{1025, 1024}, {1025, 1024}},  {{31}, {31}},
      {{4, 5, 6}, {1}},                  {{4, 5, 8}, {4, 1, 8}},         {{4, 5, 6}, {4, 1, 6}},
      {{3, 4, 8}, {4, 8}},               {{2, 1, 16}, {1, 1, 16}},       {{1}, {1}},
      {{7, 1}, {7, 1}},                  {{3, 5}, {3, 1}}};
  for (DType dtype : test::kCudaDtypes)
    for (const auto& [a, b] : cases) expect_binary_matches_cpu(a, b, dtype, Placement::fresh_output);
}

TEST(ElementwiseCuda, AddMulInPlaceAndOnUnalignedViews) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (DType dtype : test::kCudaDtypes) {
    expect_binary_matches_cpu({2, 1024, 32, 32}, {1024, 1, 1}, dtype, Placement::in_place);
    expect_binary_matches_cpu({1025, 1024}, {1024}, dtype, Placement::in_place);
    expect_binary_matches_cpu({1025, 1024}, {1025, 1024}, dtype, Placement::in_place);
    expect_binary_matches_cpu({4, 8}, {8}, dtype, Placement::unaligned_a);
    expect_binary_matches_cpu({64}, {64}, dtype, Placement::unaligned_a);
  }
}

TEST(ElementwiseCuda, ScaleMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (DType dtype : test::kCudaDtypes) {
    for (const Shape& shape : {Shape{1}, Shape{31}, Shape{1025, 1024}}) {
      for (Placement placement : {Placement::fresh_output, Placement::in_place, Placement::unaligned_a}) {
        const Tensor x = test::random_host(shape, dtype);
        Tensor ref = Tensor::empty(shape, DType::f32);
        kernels::cpu::scale(x, ref, 0.125f, -0.5f);
        Tensor x_cuda = placement == Placement::unaligned_a ? unaligned_cuda(x, dtype) : test::to_cuda(x, dtype);
        Tensor out = placement == Placement::in_place ? x_cuda : test::poisoned_cuda(shape, dtype);
        kernels::scale(x_cuda, out, 0.125f, -0.5f);
        test::expect_cuda_close(out, ref, str_cat("scale ", shape.str(), " placement ", int(placement)));
      }
    }
  }
}

TEST(ElementwiseCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor a32 = test::to_cuda(Tensor::zeros({4, 6}, DType::f32), DType::f32);
  const Tensor a16 = test::to_cuda(Tensor::zeros({4, 6}, DType::f32), DType::bf16);
  const Tensor b16 = test::to_cuda(Tensor::zeros({6}, DType::f32), DType::bf16);
  Tensor out16 = test::poisoned_cuda({4, 6}, DType::bf16), out32 = test::poisoned_cuda({4, 6}, DType::f32);
  kernels::add(a16, b16, out16);  // the valid baseline
  EXPECT_THROW(kernels::add(a32, b16, out32), Error);
  EXPECT_THROW(kernels::mul(a16, b16, out32), Error);
  EXPECT_THROW(kernels::scale(a16, out32, 2.f), Error);
  Tensor host16 = Tensor::zeros({4, 6}, DType::bf16);
  EXPECT_THROW(kernels::add(host16, Tensor::zeros({6}, DType::bf16), host16), Error);  // bf16 is CUDA only
}

// ---- add / mul / scale backward on CUDA against the CPU reference ----
// Sums over broadcast dims run in f32 (per-chunk partials, up to 2 x 32 x 32 = 2048 terms per sum at the
// model shapes): relative L2 ~1e-6, inside 1e-4.
void expect_backward_matches_cpu(const Shape& a_shape, const Shape& b_shape, DType dtype) {
  SCOPED_TRACE(str_cat(a_shape.str(), " with ", b_shape.str()));
  const Tensor a = test::random_host(a_shape, dtype), b = test::random_host(b_shape, dtype);
  const Tensor g = test::random_host(a_shape, dtype);
  const Tensor a_cuda = test::to_cuda(a, dtype), b_cuda = test::to_cuda(b, dtype), g_cuda = test::to_cuda(g, dtype);
  Tensor ref_a = Tensor::empty(a_shape, DType::f32), ref_b = Tensor::empty(b_shape, DType::f32);
  for (bool is_mul : {false, true}) {
    if (is_mul)
      kernels::cpu::mul_backward(a, b, g, ref_a, ref_b);
    else
      kernels::cpu::add_backward(g, ref_a, ref_b);
    for (int wanted = 1; wanted < 4; ++wanted) {  // bit 0: grad_a, bit 1: grad_b
      Tensor ga = wanted & 1 ? test::poisoned_cuda(a_shape, dtype) : Tensor();
      Tensor gb = wanted & 2 ? test::poisoned_cuda(b_shape, dtype) : Tensor();
      if (is_mul)
        kernels::mul_backward(a_cuda, b_cuda, g_cuda, ga, gb);
      else
        kernels::add_backward(g_cuda, ga, gb);
      const std::string what = str_cat(is_mul ? "mul" : "add", "_backward wanted ", wanted);
      if (ga.defined()) test::expect_cuda_close(ga, ref_a, what + " grad_a");
      if (gb.defined()) test::expect_cuda_close(gb, ref_b, what + " grad_b");
    }
  }
}

// The forward's broadcasts (per channel on NCHW maps and on token rows, scalar, middle and leading ones).
TEST(ElementwiseCuda, AddMulBackwardMatchCpuOnEveryBroadcast) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const std::pair<Shape, Shape> cases[] = {
      {{2, 1024, 32, 32}, {1024, 1, 1}}, {{2, 256, 7, 9}, {256, 1, 1}}, {{1025, 1024}, {1024}},
      {{1025, 1023}, {1023}},            {{1025, 1024}, {1025, 1024}},  {{31}, {31}},
      {{4, 5, 6}, {1}},                  {{4, 5, 8}, {4, 1, 8}},         {{4, 5, 6}, {4, 1, 6}},
      {{3, 4, 8}, {4, 8}},               {{2, 1, 16}, {1, 1, 16}},       {{1}, {1}},
      {{7, 1}, {7, 1}},                  {{3, 5}, {3, 1}},               {{100000}, {1}}};
  for (DType dtype : test::kCudaDtypes)
    for (const auto& [a, b] : cases) expect_backward_matches_cpu(a, b, dtype);
}

// grad_a may be grad_out itself (mul reads grad_out for grad_b first); sums are run-to-run identical.
TEST(ElementwiseCuda, BackwardInPlaceAndDeterministic) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (DType dtype : test::kCudaDtypes) {
    const Shape a_shape{2, 256, 7, 9}, b_shape{256, 1, 1};
    const Tensor a = test::random_host(a_shape, dtype), b = test::random_host(b_shape, dtype);
    const Tensor g = test::random_host(a_shape, dtype);
    Tensor ref_a = Tensor::empty(a_shape, DType::f32), ref_b = Tensor::empty(b_shape, DType::f32);
    kernels::cpu::mul_backward(a, b, g, ref_a, ref_b);
    Tensor g_cuda = test::to_cuda(g, dtype), gb = test::poisoned_cuda(b_shape, dtype);
    kernels::mul_backward(test::to_cuda(a, dtype), test::to_cuda(b, dtype), g_cuda, g_cuda, gb);
    test::expect_cuda_close(g_cuda, ref_a, "mul_backward in place grad_a");
    test::expect_cuda_close(gb, ref_b, "mul_backward in place grad_b");
    Tensor first = test::poisoned_cuda({1024}, dtype), second = test::poisoned_cuda({1024}, dtype), none;
    const Tensor big = test::to_cuda(test::random_host({4, 1025, 1024}, dtype), dtype);
    kernels::add_backward(big, none, first);
    kernels::add_backward(big, none, second);
    EXPECT_EQ(test::compare(first, second).max_abs, 0.0);
  }
}

TEST(ElementwiseCuda, ScaleBackwardMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (DType dtype : test::kCudaDtypes)
    for (const Shape& shape : {Shape{1}, Shape{31}, Shape{1025, 1024}}) {
      const Tensor g = test::random_host(shape, dtype);
      Tensor ref = Tensor::empty(shape, DType::f32), out = test::poisoned_cuda(shape, dtype);
      kernels::cpu::scale_backward(g, ref, -0.125f);
      kernels::scale_backward(test::to_cuda(g, dtype), out, -0.125f);
      test::expect_cuda_close(out, ref, str_cat("scale_backward ", shape.str()));
    }
}

TEST(ElementwiseCuda, BackwardRejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor g16 = test::to_cuda(Tensor::zeros({4, 6}, DType::f32), DType::bf16);
  const Tensor a32 = test::to_cuda(Tensor::zeros({4, 6}, DType::f32), DType::f32);
  const Tensor b16 = test::to_cuda(Tensor::zeros({6}, DType::f32), DType::bf16);
  Tensor ga16 = test::poisoned_cuda({4, 6}, DType::bf16), gb16 = test::poisoned_cuda({6}, DType::bf16);
  Tensor gb32 = test::poisoned_cuda({6}, DType::f32), none;
  kernels::add_backward(g16, ga16, gb16);  // the valid baseline
  EXPECT_THROW(kernels::add_backward(g16, none, gb32), Error);
  EXPECT_THROW(kernels::mul_backward(a32, b16, g16, ga16, none), Error);
  EXPECT_THROW(kernels::scale_backward(g16, gb32, 2.f), Error);
}

}  // namespace
}  // namespace mfuser
