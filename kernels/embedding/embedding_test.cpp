// embedding: bit-exact against F.embedding for 3-d and 0-d ids and for CLIP's real 49408 x 768 lookup.
#include "kernels/embedding/embedding.h"

#include <cmath>
#include <cstdio>
#include <vector>

#include "loaders/safetensors.h"
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

}  // namespace
}  // namespace mfuser
