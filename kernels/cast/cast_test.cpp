// cast: CPU reference bit-exact against PyTorch's conversions; CUDA bit-exact against the CPU reference.
#include "kernels/cast/cast.h"

#include <cmath>
#include <cstring>

#include "loaders/safetensors.h"
#include "tests/common/test_util.h"

namespace mfuser {
namespace {

// Bitwise equality, except that any NaN equals any NaN (payloads are not part of the contract).
int64_t count_mismatches(const Tensor& a_any, const Tensor& b_any) {
  const Tensor a = a_any.to(Device::cpu()), b = b_any.to(Device::cpu());
  EXPECT_EQ(a.dtype(), b.dtype());
  EXPECT_EQ(a.numel(), b.numel());
  const size_t size = dtype_size(a.dtype());
  int64_t bad = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const auto* pa = static_cast<const uint8_t*>(a.raw_data()) + i * size;
    const auto* pb = static_cast<const uint8_t*>(b.raw_data()) + i * size;
    if (std::memcmp(pa, pb, size) == 0) continue;
    if (!(std::isnan(test::value_at(a, i)) && std::isnan(test::value_at(b, i)))) ++bad;
  }
  return bad;
}

struct Case {
  const char* from;
  const char* to;
  DType dtype;
};
const Case kCases[] = {{"x", "bf16", DType::bf16},          {"x", "f16", DType::f16},
                       {"bf16", "bf16_to_f32", DType::f32}, {"f16", "f16_to_f32", DType::f32},
                       {"bf16", "bf16_to_f16", DType::f16}, {"f16", "f16_to_bf16", DType::bf16}};

class CastTest : public ::testing::Test {
 protected:
  void SetUp() override {
    golden_ = std::make_unique<SafetensorsReader>(test::golden_path("cast"));
    seed_trace_ = "golden seed " + golden_->metadata().at("seed");
  }
  std::unique_ptr<SafetensorsReader> golden_;
  std::string seed_trace_;
};

TEST_F(CastTest, CpuMatchesPyTorchBitExact) {
  SCOPED_TRACE(seed_trace_);
  for (const Case& c : kCases) {
    SCOPED_TRACE(std::string(c.from) + " -> " + c.to);
    const Tensor src = golden_->view(c.from);
    Tensor out = Tensor::empty(src.shape(), c.dtype);
    test::poison(out);
    kernels::cpu::cast(src, out);
    EXPECT_EQ(count_mismatches(out, golden_->view(c.to)), 0);
  }
}

TEST_F(CastTest, RejectsMismatchedArguments) {
  const Tensor src = golden_->view("x");
  Tensor wrong_size = Tensor::empty({3}, DType::bf16);
  EXPECT_THROW(kernels::cast(src, wrong_size), Error);
  Tensor not_float = Tensor::empty(src.shape(), DType::i32);
  EXPECT_THROW(kernels::cast(src, not_float), Error);
}

class CastCuda : public CastTest {};

TEST_F(CastCuda, MatchesCpuBitExact) {
  MFUSER_REQUIRE_CUDA();
  SCOPED_TRACE(seed_trace_);
  for (const Case& c : kCases) {
    SCOPED_TRACE(std::string(c.from) + " -> " + c.to);
    const Tensor src = golden_->view(c.from);
    Tensor ref = Tensor::empty(src.shape(), c.dtype);
    kernels::cpu::cast(src, ref);
    Tensor out = Tensor::empty(src.shape(), c.dtype, Device::cuda());
    test::poison(out);
    kernels::cast(src.to(Device::cuda()), out);
    EXPECT_EQ(count_mismatches(out, ref), 0);
  }
}

}  // namespace
}  // namespace mfuser
