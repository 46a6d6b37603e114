// dropout: the CPU reference against its definition element by element (kept elements exactly x / (1 - p),
// dropped ones exactly 0, one draw per unit), its keep rate against 1 - p within 5 standard deviations, the
// streams of different seeds and salts independent, p = 0 the identity; the CUDA kernel draws bitwise the CPU's
// mask (f32 bitwise equal, bf16 zeros in the same places and the kept values to one rounding).
// No PyTorch golden: PyTorch's random stream cannot be reproduced (dropout.h); the formula is F.dropout's and
// timm's drop_path's.
#include "kernels/dropout/dropout.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tests/common/cuda_test.h"

namespace mfuser {
namespace {

using kernels::DropoutMask;

Tensor seed_tensor(int64_t seed, Device device = Device::cpu()) {
  return Tensor::from_vector(std::vector<int64_t>{seed}, {1}).to(device);
}

// Every element against the definition; returns the fraction of units kept.
double expect_definition(const Tensor& x, const Tensor& out, int64_t seed, const DropoutMask& m) {
  const int64_t n = x.numel(), units = m.units > 0 ? m.units : (n + m.inner - 1) / m.inner;
  const uint64_t key = kernels::dropout_key(uint64_t(seed), m.salt);
  const float scale = 1.f / (1.f - m.p);
  int64_t wrong = 0, kept = 0;
  std::vector<int> unit_kept(size_t(units), -1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t u = (i / m.inner) % units;
    const bool keep = kernels::dropout_keeps(key, uint64_t(u), m.p);
    const float want = keep ? x.data<float>()[i] * scale : 0.f;
    wrong += out.data<float>()[i] != want;
    wrong += unit_kept[size_t(u)] >= 0 && unit_kept[size_t(u)] != int(keep);  // one draw per unit
    unit_kept[size_t(u)] = keep;
  }
  for (int k : unit_kept) kept += k == 1;
  EXPECT_EQ(wrong, 0) << "elements off the definition (seed " << seed << ")";
  return double(kept) / double(units);
}

TEST(Dropout, ElementwiseMatchesDefinitionAndKeepRate) {
  MFUSER_SEED_TRACE();
  const int64_t seed = int64_t(test::rng()() >> 1);
  const Tensor x = test::random_host({1000, 1000}, DType::f32);
  for (const float p : {0.1f, 0.5f}) {
    const DropoutMask m{.p = p, .salt = kernels::dropout_salt("decoder.0.dropout")};
    Tensor out = Tensor::empty(x.shape(), DType::f32);
    test::poison(out);
    kernels::dropout(x, seed_tensor(seed), out, m);
    const double kept = expect_definition(x, out, seed, m);
    const double sigma = std::sqrt(p * (1 - p) / double(x.numel()));
    std::printf("[ dropout  ] p %.1f: kept %.5f of 1e6 (want %.5f +- %.5f)\n", p, kept, 1 - p, 5 * sigma);
    EXPECT_NEAR(kept, 1 - p, 5 * sigma);
  }
}

// DropPath: batch-first [B, L, C] (one draw per sample) and sequence-first [L, B, C] (CLIP's blocks).
TEST(Dropout, DropPathDrawsOncePerSample) {
  MFUSER_SEED_TRACE();
  const int64_t seed = int64_t(test::rng()() >> 1);
  const Tensor x = test::random_host({64, 7, 5}, DType::f32);
  Tensor out = Tensor::empty(x.shape(), DType::f32);
  const DropoutMask batch_first{.p = 0.3f, .salt = 7, .inner = 7 * 5, .units = 64};
  kernels::dropout(x, seed_tensor(seed), out, batch_first);
  expect_definition(x, out, seed, batch_first);
  const DropoutMask seq_first{.p = 0.3f, .salt = 7, .inner = 5, .units = 7};  // x read as [64, 7, 5] = [L, B, C]
  kernels::dropout(x, seed_tensor(seed), out, seq_first);
  expect_definition(x, out, seed, seq_first);
}

TEST(Dropout, StreamsOfSeedsAndSaltsDiffer) {
  const Tensor x = Tensor::from_vector(std::vector<float>(4096, 1.f), {4096});
  const auto mask = [&](int64_t seed, uint64_t salt) {
    Tensor out = Tensor::empty(x.shape(), DType::f32);
    kernels::dropout(x, seed_tensor(seed), out, {.p = 0.5f, .salt = salt});
    return out;
  };
  const auto agreement = [](const Tensor& a, const Tensor& b) {
    int64_t same = 0;
    for (int64_t i = 0; i < a.numel(); ++i) same += a.data<float>()[i] == b.data<float>()[i];
    return double(same) / double(a.numel());
  };
  const Tensor base = mask(1, 1);
  EXPECT_EQ(agreement(base, mask(1, 1)), 1.0);  // deterministic
  // Independent streams agree on half of the elements (p = 0.5): 5 sigma of 4096 draws is 0.039.
  EXPECT_NEAR(agreement(base, mask(2, 1)), 0.5, 0.04);
  EXPECT_NEAR(agreement(base, mask(1, 2)), 0.5, 0.04);
  EXPECT_NEAR(agreement(base, mask(1, kernels::dropout_salt("a"))), 0.5, 0.04);
}

TEST(Dropout, ZeroRateIsIdentityAndInPlaceWorks) {
  const Tensor x = test::random_host({3, 17}, DType::f32);
  Tensor out = Tensor::empty(x.shape(), DType::f32);
  kernels::dropout(x, seed_tensor(5), out, {.p = 0.f, .salt = 3});
  EXPECT_EQ(std::memcmp(out.raw_data(), x.raw_data(), x.nbytes()), 0);
  Tensor in_place = x.to(Device::cpu()), separate = Tensor::empty(x.shape(), DType::f32);
  kernels::dropout(x, seed_tensor(5), separate, {.p = 0.4f, .salt = 3});
  kernels::dropout(in_place, seed_tensor(5), in_place, {.p = 0.4f, .salt = 3});
  EXPECT_EQ(std::memcmp(in_place.raw_data(), separate.raw_data(), x.nbytes()), 0);
}

TEST(Dropout, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({4}, DType::f32);
  Tensor out = Tensor::empty({4}, DType::f32), wrong_shape = Tensor::empty({5}, DType::f32);
  EXPECT_THROW(kernels::dropout(x, seed_tensor(1), out, {.p = 1.f}), Error);
  EXPECT_THROW(kernels::dropout(x, seed_tensor(1), out, {.p = -0.1f}), Error);
  EXPECT_THROW(kernels::dropout(x, seed_tensor(1), wrong_shape, {.p = 0.1f}), Error);
  EXPECT_THROW(kernels::dropout(x, Tensor::zeros({1}, DType::f32), out, {.p = 0.1f}), Error);
  EXPECT_THROW(kernels::dropout(x, seed_tensor(1), out, {.p = 0.1f, .inner = 0}), Error);
}

// CUDA draws bitwise the CPU's mask: element-wise and per-sample, f32 and bf16, out of place and in place.
TEST(DropoutCuda, MatchesCpuMaskBitwise) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const int64_t seed = int64_t(test::rng()() >> 1);
  const Shape shape{2, 1025, 1024};
  const DropoutMask masks[] = {{.p = 0.1f, .salt = kernels::dropout_salt("backbone.adapter.0.proj_drop")},
                               {.p = 0.1f, .salt = 9, .inner = 1024, .units = 1025}};
  for (const DType dtype : test::kCudaDtypes)
    for (const DropoutMask& m : masks) {
      const Tensor x = test::random_host(shape, dtype);
      Tensor ref = Tensor::empty(shape, DType::f32);
      kernels::cpu::dropout(x, seed_tensor(seed), ref, m);
      Tensor out = test::poisoned_cuda(shape, dtype), in_place = test::to_cuda(x, dtype);
      kernels::dropout(test::to_cuda(x, dtype), seed_tensor(seed, Device::cuda()), out, m);
      kernels::dropout(in_place, seed_tensor(seed, Device::cuda()), in_place, m);
      for (const Tensor* result : {&out, &in_place}) {
        const Tensor got = kernels::cast_to(*result, DType::f32).to(Device::cpu());
        int64_t mask_differs = 0;
        for (int64_t i = 0; i < got.numel(); ++i)
          mask_differs += (got.data<float>()[i] == 0.f) != (ref.data<float>()[i] == 0.f);
        EXPECT_EQ(mask_differs, 0) << "elements whose mask differs from the CPU's (seed " << seed << ")";
        if (dtype == DType::f32)
          EXPECT_EQ(std::memcmp(got.raw_data(), ref.raw_data(), ref.nbytes()), 0) << "f32 not bitwise the CPU's";
        else
          test::expect_cuda_close(*result, ref, str_cat("dropout bf16 inner ", m.inner));
      }
    }
}

}  // namespace
}  // namespace mfuser
