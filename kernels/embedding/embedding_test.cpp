// embedding: bit-exact against F.embedding for 3-d and 0-d ids and for CLIP's real 49408 x 768 lookup.
#include "kernels/embedding/embedding.h"

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "loaders/safetensors.h"
#include "tests/common/cuda_test.h"
#include "tests/common/test_util.h"

namespace mfuser {
namespace {

class EmbeddingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    golden_ = std::make_unique<SafetensorsReader>(test::golden_path("embedding"));
    seed_trace_ = "golden seed " + golden_->metadata().at("seed");
  }
  // Gathers into a poisoned output and expects PyTorch's rows bit for bit.
  void expect_exact(const Tensor& ids, const Tensor& table, const Tensor& ref) const {
    std::vector<int64_t> dims(ids.shape().dims().begin(), ids.shape().dims().end());
    dims.push_back(table.dim(1));
    Tensor out = Tensor::empty(Shape(dims), DType::f32);
    test::poison(out);
    kernels::cpu::embedding(ids, table, out);
    ASSERT_EQ(out.shape(), ref.shape());
    const test::ErrorStats e = test::compare(out, ref);
    std::printf("ids %s into %s: %s\n", ids.shape().str().c_str(), table.shape().str().c_str(),
                test::describe(e).c_str());
    EXPECT_EQ(e.nonfinite, 0);
    EXPECT_EQ(e.max_abs, 0.0);
  }
  std::unique_ptr<SafetensorsReader> golden_;
  std::string seed_trace_;
};

TEST_F(EmbeddingTest, TinyMatchesPyTorchBitExact) {
  SCOPED_TRACE(seed_trace_);
  expect_exact(golden_->view("tiny.ids"), golden_->view("tiny.table"), golden_->view("tiny.out"));
  expect_exact(golden_->view("scalar.ids"), golden_->view("tiny.table"), golden_->view("scalar.out"));
}

// The real table is rebuilt as in embedding_golden.py's real_table: row v = v + fraction (exact in f32).
TEST_F(EmbeddingTest, ClipTokenTableMatchesPyTorchBitExact) {
  SCOPED_TRACE(seed_trace_);
  const Tensor fraction = golden_->view("real.fraction");
  const int64_t vocab = 49408, width = fraction.numel();
  Tensor table = Tensor::empty({vocab, width}, DType::f32);
  for (int64_t v = 0; v < vocab; ++v)
    for (int64_t d = 0; d < width; ++d) table.data<float>()[v * width + d] = float(v) + fraction.data<float>()[d];
  expect_exact(golden_->view("real.ids"), table, golden_->view("real.out"));
}

TEST_F(EmbeddingTest, RejectsIdsOutsideTheTable) {
  const Tensor table = Tensor::zeros({5, 3}, DType::f32);
  Tensor out = Tensor::empty({2, 3}, DType::f32);
  for (int64_t bad : {int64_t(5), int64_t(-1)}) {
    test::poison(out);
    try {
      kernels::embedding(Tensor::from_vector<int64_t>({1, bad}, {2}), table, out);
      ADD_FAILURE() << "id " << bad << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("id " + std::to_string(bad)), std::string::npos) << e.what();
    }
    EXPECT_TRUE(std::isnan(out.data<float>()[0])) << "out was written before the ids were checked";
  }
}

TEST_F(EmbeddingTest, RejectsBadArguments) {
  const Tensor table = Tensor::zeros({5, 3}, DType::f32);
  const Tensor ids = Tensor::from_vector<int64_t>({0, 4}, {2});
  Tensor wrong_shape = Tensor::empty({2, 4}, DType::f32);
  EXPECT_THROW(kernels::embedding(ids, table, wrong_shape), Error);
  Tensor out = Tensor::empty({2, 3}, DType::f32);
  EXPECT_THROW(kernels::embedding(Tensor::from_vector<int32_t>({0, 4}, {2}), table, out), Error);
  EXPECT_THROW(kernels::embedding(ids, Tensor::zeros({15}, DType::f32), out), Error);
}

// ---- CUDA against the CPU reference: rows copied bit for bit, in every storage dtype ----

// Random ids in [0, vocab) of `ids_shape` into a random table; `out_offset` elements into its buffer (1: not
// 16-byte aligned, so the kernel must copy element by element).
void expect_embedding_matches_cpu(const Shape& ids_shape, int64_t vocab, int64_t width, DType dtype,
                                  int64_t out_offset = 0) {
  const std::string what = str_cat("ids ", ids_shape.str(), " into [", vocab, ", ", width, "]",
                                   out_offset ? " unaligned out" : "");
  Tensor ids = Tensor::empty(ids_shape, DType::i64);
  std::uniform_int_distribution<int64_t> pick(0, vocab - 1);
  for (int64_t i = 0; i < ids.numel(); ++i) ids.data<int64_t>()[i] = pick(test::rng());
  const Tensor table = test::random_host({vocab, width}, dtype);
  std::vector<int64_t> dims(ids_shape.dims().begin(), ids_shape.dims().end());
  dims.push_back(width);
  const Shape out_shape(dims);
  Tensor ref = Tensor::empty(out_shape, DType::f32);
  kernels::cpu::embedding(ids, table, ref);
  const int64_t n = out_shape.numel();
  Tensor out = test::poisoned_cuda({n + out_offset, 1}, dtype).slice_rows(out_offset, n + out_offset).reshape(out_shape);
  kernels::embedding(ids.to(Device::cuda()), test::to_cuda(table, dtype), out);
  test::expect_cuda_close(out, ref, what);
  EXPECT_EQ(test::compare(out, ref).max_abs, 0.0) << what;
}

// CLIP's text lookup (19 class prompts x 77 tokens, width 768; a 4096-row slice of the 49408-token table
// keeps the test fast), odd widths (no 16-byte rows), 0-d ids, and an output view at an odd offset.
TEST(EmbeddingCuda, MatchesCpuBitExact) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (DType dtype : test::kCudaDtypes) {
    expect_embedding_matches_cpu({19, 77}, 4096, 768, dtype);
    expect_embedding_matches_cpu({2, 3, 5}, 11, 7, dtype);
    expect_embedding_matches_cpu({3}, 5, 1, dtype);
    expect_embedding_matches_cpu({}, 9, 8, dtype);
    expect_embedding_matches_cpu({6, 4}, 10, 8, dtype, 1);
  }
}

// An id outside the table cannot throw on the device (no synchronization): its row becomes NaN, the others
// are still copied.
TEST(EmbeddingCuda, IdsOutsideTheTableGiveNanRows) {
  MFUSER_REQUIRE_CUDA();
  for (DType dtype : test::kCudaDtypes) {
    const Tensor table = test::to_cuda(Tensor::from_vector<float>({0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {5, 2}), dtype);
    Tensor out = test::poisoned_cuda({3, 2}, dtype);
    kernels::embedding(Tensor::from_vector<int64_t>({1, 5, -1}, {3}).to(Device::cuda()), table, out);
    const Tensor got = kernels::cast_to(out.to(Device::cpu()), DType::f32);
    EXPECT_EQ(got.data<float>()[0], 2.f);
    EXPECT_EQ(got.data<float>()[1], 3.f);
    for (int64_t i = 2; i < 6; ++i) EXPECT_TRUE(std::isnan(got.data<float>()[i])) << i;
  }
}

TEST(EmbeddingCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor ids = Tensor::from_vector<int64_t>({0, 4}, {2}).to(Device::cuda());
  const Tensor table16 = test::to_cuda(Tensor::zeros({5, 3}, DType::f32), DType::bf16);
  Tensor out16 = test::poisoned_cuda({2, 3}, DType::bf16), out32 = test::poisoned_cuda({2, 3}, DType::f32);
  kernels::embedding(ids, table16, out16);  // the valid baseline
  EXPECT_THROW(kernels::embedding(ids, table16, out32), Error);
  EXPECT_THROW(kernels::embedding(Tensor::from_vector<int64_t>({0, 4}, {2}), table16, out16), Error);  // devices
}

}  // namespace
}  // namespace mfuser
