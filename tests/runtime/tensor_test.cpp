#include "runtime/tensor.h"

#include <cmath>

#include "runtime/cuda.h"
#include "runtime/parallel.h"
#include "tests/common/test_util.h"

namespace mfuser {
namespace {

TEST(Shape, BasicsAndNegativeIndex) {
  const Shape s{2, 3, 4};
  EXPECT_EQ(s.ndim(), 3);
  EXPECT_EQ(s.numel(), 24);
  EXPECT_EQ(s[-1], 4);
  EXPECT_EQ(s.str(), "[2, 3, 4]");
  EXPECT_EQ(Shape{}.numel(), 1);  // 0-d scalar
  EXPECT_EQ((Shape{5, 0}).numel(), 0);
  EXPECT_THROW((Shape{1, 2, 3, 4, 5, 6, 7}), Error);
  EXPECT_THROW((Shape{2, -1}), Error);
  EXPECT_THROW((void)s[3], Error);
}

TEST(Tensor, EmptyZerosAndAlignment) {
  for (DType t : {DType::f32, DType::bf16, DType::f16, DType::i32, DType::i64, DType::u8, DType::boolean}) {
    Tensor z = Tensor::zeros({3, 5}, t);
    EXPECT_EQ(z.nbytes(), 15 * dtype_size(t));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(z.raw_data()) % 64, 0u);
    const auto* bytes = static_cast<const uint8_t*>(z.raw_data());
    for (size_t i = 0; i < z.nbytes(); ++i) ASSERT_EQ(bytes[i], 0);
  }
}

TEST(Tensor, TypedAccessChecksDtype) {
  Tensor t = Tensor::from_vector<int64_t>({1, 2, 3}, {3});
  EXPECT_EQ(t.data<int64_t>()[2], 3);
  EXPECT_THROW(t.data<float>(), Error);
  EXPECT_THROW(Tensor::from_vector<float>({1.f}, {2}), Error);
  EXPECT_THROW(Tensor().raw_data(), Error);
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::from_vector<float>({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {3, 4});
  Tensor rows = t.slice_rows(1, 3);
  EXPECT_EQ(rows.shape(), (Shape{2, 4}));
  EXPECT_EQ(rows.data<float>()[0], 4.f);
  rows.data<float>()[0] = 40.f;  // writes through to t
  EXPECT_EQ(t.data<float>()[4], 40.f);
  Tensor r = t.reshape({2, -1});
  EXPECT_EQ(r.shape(), (Shape{2, 6}));
  EXPECT_EQ(r.storage(), t.storage());
  EXPECT_EQ(rows.reshape({-1}).shape(), Shape{8});
  EXPECT_THROW(t.reshape({5, -1}), Error);
  EXPECT_THROW(t.reshape({-1, -1}), Error);
  EXPECT_THROW(t.slice_rows(2, 4), Error);
}

TEST(Tensor, HostCopiesAreIndependent) {
  Tensor t = Tensor::from_vector<float>({1, 2, 3}, {3});
  Tensor c = t.to(Device::cpu());
  c.data<float>()[0] = 9;
  EXPECT_EQ(t.data<float>()[0], 1.f);
  Tensor dst = Tensor::empty({3}, DType::f32);
  dst.copy_from(t);
  EXPECT_EQ(dst.data<float>()[2], 3.f);
  Tensor wrong = Tensor::empty({3}, DType::bf16);
  EXPECT_THROW(wrong.copy_from(t), Error);
}

TEST(DTypes, NamesRoundTrip) {
  for (DType t : {DType::f32, DType::bf16, DType::f16, DType::i32, DType::i64, DType::u8, DType::boolean})
    EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
  EXPECT_FALSE(dtype_from_name("F64").has_value());
}

TEST(DTypes, HalfConversionsRoundTripEveryValue) {
  // Every finite 16-bit pattern converts to float and back to itself.
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const f16_t h{uint16_t(bits)};
    const float f = f16_to_float(h);
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_f16(f).bits, h.bits) << "f16 bits " << bits;
    const bf16_t b{uint16_t(bits)};
    const float g = bf16_to_float(b);
    if (std::isnan(g)) continue;
    ASSERT_EQ(float_to_bf16(g).bits, b.bits) << "bf16 bits " << bits;
  }
}

TEST(Parallel, ForCoversRangeOnce) {
  std::vector<int> hits(100000, 0);
  parallel_for(int64_t(hits.size()), 1000, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
  });
  for (int h : hits) ASSERT_EQ(h, 1);
}

}  // namespace
}  // namespace mfuser
