// elementwise: add / mul bit-exact against PyTorch over every broadcast pattern; scale within fp32 rounding.
#include "kernels/elementwise/elementwise.h"

#include <cstdio>

#include "loaders/safetensors.h"
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

}  // namespace
}  // namespace mfuser
