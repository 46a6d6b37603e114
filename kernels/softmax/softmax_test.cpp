// softmax: against PyTorch's f64 softmax for every mask kind and broadcast, fully masked rows (NaN, as in
// PyTorch), the ViT self-attention size and the Mask2Former decoder's masked cross-attention size.
#include "kernels/softmax/softmax.h"

#include <cmath>
#include <cstdio>
#include <vector>

#include "loaders/safetensors.h"
#include "tests/common/row_blocks.h"
#include "tests/common/test_util.h"

namespace mfuser {
namespace {

// Cases of softmax_golden.py stored whole: `<name>.x`, optional `<name>.mask`, `<name>.out`.
const char* const kCases[] = {"tiny.plain",       "tiny.large_logits", "tiny.additive", "tiny.causal",
                              "tiny.key_padding", "tiny.bool_full",    "real.decoder"};

// Probabilities are at most 1: a few ulp of 1 at most.
constexpr double kMaxAbs = 1e-6;

struct RowErrors {
  test::ErrorStats finite;     // over the rows PyTorch computes
  int64_t nan_rows = 0;        // rows PyTorch makes NaN (fully masked)
  int64_t nan_mismatches = 0;  // elements of those rows that are not NaN here
};

// Row by row: a row PyTorch makes NaN must be NaN throughout here; all other rows are compared together.
RowErrors compare_rows(const Tensor& out, const Tensor& ref) {
  const int64_t cols = ref.dim(-1), rows = ref.numel() / cols;
  const float* po = out.data<float>();
  const float* pr = ref.data<float>();
  std::vector<float> kept_out, kept_ref;
  RowErrors e;
  for (int64_t r = 0; r < rows; ++r) {
    const float *o = po + r * cols, *ref_row = pr + r * cols;
    if (std::isnan(ref_row[0])) {
      ++e.nan_rows;
      for (int64_t j = 0; j < cols; ++j) e.nan_mismatches += !std::isnan(o[j]);
    } else {
      kept_out.insert(kept_out.end(), o, o + cols);
      kept_ref.insert(kept_ref.end(), ref_row, ref_row + cols);
    }
  }
  const Shape kept{int64_t(kept_ref.size())};
  e.finite = test::compare(Tensor::from_vector(kept_out, kept), Tensor::from_vector(kept_ref, kept));
  return e;
}

class SoftmaxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    golden_ = std::make_unique<SafetensorsReader>(test::golden_path("softmax"));
    seed_trace_ = "golden seed " + golden_->metadata().at("seed");
  }
  Tensor run(const std::string& name) const {
    const Tensor x = golden_->load(name + ".x", DType::f32);  // real sizes store x as f16, exact in f32
    const Tensor mask = golden_->contains(name + ".mask") ? golden_->view(name + ".mask") : Tensor();
    Tensor out = Tensor::empty(x.shape(), DType::f32);
    test::poison(out);
    kernels::cpu::softmax(x, mask, out);
    return out;
  }
  std::unique_ptr<SafetensorsReader> golden_;
  std::string seed_trace_;
};

TEST_F(SoftmaxTest, MatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  for (const char* name : kCases) {
    SCOPED_TRACE(name);
    const RowErrors e = compare_rows(run(name), golden_->view(std::string(name) + ".out"));
    std::printf("%s: %s, NaN rows %lld\n", name, test::describe(e.finite).c_str(),
                static_cast<long long>(e.nan_rows));
    EXPECT_EQ(e.nan_mismatches, 0);
    EXPECT_EQ(e.finite.nonfinite, 0);
    EXPECT_LE(e.finite.rel_l2, 1e-5);
    EXPECT_LE(e.finite.max_abs, kMaxAbs);
  }
}

TEST_F(SoftmaxTest, FullyMaskedRowsAreNaNLikePyTorch) {
  SCOPED_TRACE(seed_trace_);
  // tiny.additive masks one query row in each of 2 x 3 heads; tiny.bool_full masks two rows.
  EXPECT_EQ(compare_rows(run("tiny.additive"), golden_->view("tiny.additive.out")).nan_rows, 6);
  EXPECT_EQ(compare_rows(run("tiny.bool_full"), golden_->view("tiny.bool_full.out")).nan_rows, 2);
}

// ViT self-attention: 16 heads x 1025 queries x 1025 keys; PyTorch's rows are stored in blocks.
TEST_F(SoftmaxTest, VitAttentionSizeMatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  const Tensor out = run("real.vit");
  const test::RowBlockErrors e = test::compare_row_blocks(out, *golden_, "real.vit");
  EXPECT_EQ(e.nonfinite, 0);
  for (const auto& b : e.blocks) {
    SCOPED_TRACE(str_cat("rows [", b.begin, ", ", b.end, ")"));
    std::printf("real.vit rows [%lld, %lld): %s\n", static_cast<long long>(b.begin),
                static_cast<long long>(b.end), test::describe(b.error).c_str());
    EXPECT_LE(b.error.rel_l2, 1e-5);
    EXPECT_LE(b.error.max_abs, kMaxAbs);
  }
  // The rows not stored must at least be distributions.
  const float* p = out.data<float>();
  for (int64_t r = 0; r < out.numel() / 1025; ++r) {
    double sum = 0;
    for (int64_t j = 0; j < 1025; ++j) sum += p[r * 1025 + j];
    ASSERT_NEAR(sum, 1.0, 1e-5) << "row " << r;
  }
}

TEST_F(SoftmaxTest, InPlace) {
  SCOPED_TRACE(seed_trace_);
  Tensor x = golden_->view("tiny.causal.x").to(Device::cpu());
  kernels::softmax(x, golden_->view("tiny.causal.mask"), x);
  EXPECT_LE(test::compare(x, golden_->view("tiny.causal.out")).max_abs, kMaxAbs);
}

TEST_F(SoftmaxTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({2, 3, 5}, DType::f32);
  Tensor out = Tensor::empty({2, 3, 5}, DType::f32);
  EXPECT_THROW(kernels::softmax(x, Tensor::zeros({4}, DType::f32), out), Error);        // not broadcastable
  EXPECT_THROW(kernels::softmax(x, Tensor::zeros({1, 2, 3, 5}, DType::f32), out), Error);  // more dims
  EXPECT_THROW(kernels::softmax(x, Tensor::zeros({5}, DType::i32), out), Error);        // mask dtype
  Tensor wrong_out = Tensor::empty({2, 15}, DType::f32);
  EXPECT_THROW(kernels::softmax(x, Tensor(), wrong_out), Error);
}

}  // namespace
}  // namespace mfuser
