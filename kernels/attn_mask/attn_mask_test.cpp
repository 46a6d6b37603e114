// attn_mask: against the tqdm head's mask computation in PyTorch, element for element.
#include "kernels/attn_mask/attn_mask.h"

#include <cmath>
#include <cstdio>
#include <cstring>

#include "loaders/safetensors.h"
#include "tests/common/cuda_test.h"
#include "tests/common/test_util.h"

namespace mfuser {
namespace {

// Cases of attn_mask_golden.py: `<name>.logits`, `<name>.out`.
const char* const kCases[] = {"tiny", "real.16", "real.32", "real.64"};

TEST(AttnMaskTest, MatchesPyTorch) {
  SafetensorsReader golden(test::golden_path("attn_mask"));
  SCOPED_TRACE("golden seed " + golden.metadata().at("seed"));
  for (const char* name : kCases) {
    const std::string c = name;
    const Tensor logits = golden.view(c + ".logits");
    const Tensor ref = golden.view(c + ".out");
    Tensor out = Tensor::empty(logits.shape(), DType::boolean);
    test::poison(out);
    kernels::attn_mask(logits, out);
    int64_t wrong = 0, masked = 0;
    for (int64_t i = 0; i < out.numel(); ++i) {
      wrong += out.data<bool>()[i] != ref.data<bool>()[i];
      masked += ref.data<bool>()[i];
    }
    std::printf("%s %s: %lld of %lld masked, %lld differ\n", c.c_str(), logits.shape().str().c_str(),
                (long long)masked, (long long)out.numel(), (long long)wrong);
    EXPECT_EQ(wrong, 0) << c;
  }
}

TEST(AttnMaskTest, FullyMaskedRowIsUnmasked) {
  const Tensor logits = Tensor::from_vector<float>({-1, -2, -3, 1, -1, 2}, {2, 3});
  Tensor out = Tensor::empty({2, 3}, DType::boolean);
  kernels::attn_mask(logits, out);
  const bool* m = out.data<bool>();
  EXPECT_FALSE(m[0] || m[1] || m[2]);
  EXPECT_FALSE(m[3]);
  EXPECT_TRUE(m[4]);
  EXPECT_FALSE(m[5]);
}

TEST(AttnMaskTest, RejectsBadArguments) {
  const Tensor logits = Tensor::zeros({2, 3}, DType::f32);
  Tensor wrong_dtype = Tensor::empty({2, 3}, DType::f32);
  Tensor wrong_shape = Tensor::empty({3, 2}, DType::boolean);
  EXPECT_THROW(kernels::attn_mask(logits, wrong_dtype), Error);
  EXPECT_THROW(kernels::attn_mask(logits, wrong_shape), Error);
}

// ---- CUDA vs the CPU reference: booleans, exactly ---------------------------------------------------------------

// Random logits in which row r is all negative when r % 4 == 0 (fully masked: must come out all false), all
// positive when r % 4 == 1, mixed otherwise; every 7th element of the mixed rows is tiny (|x| ~ 1e-8, where the
// f32 sigmoid is exactly 0.5: never masked).
Tensor mask_logits(const Shape& shape, DType dtype) {
  Tensor t = test::random_host(shape, DType::f32);
  const int64_t n = shape[-1];
  float* v = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    const int64_t row = i / n;
    if (row % 4 == 0) v[i] = -std::abs(v[i]) - 1e-3f;
    else if (row % 4 == 1) v[i] = std::abs(v[i]) + 1e-3f;
    else if (i % 7 == 0) v[i] = v[i] < 0 ? -1e-8f : 1e-8f;
  }
  return test::representable(t, dtype);
}

TEST(AttnMaskCuda, MatchesCpuExactly) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const Shape shapes[] = {{3, 5}, {7, 1}, {2, 3, 1000}, {1, 1, 19, 256}, {2, 1, 19, 1024}, {1, 1, 19, 4096}};
  for (const DType dtype : test::kCudaDtypes) {
    for (const Shape& shape : shapes) {
      const Tensor logits = mask_logits(shape, dtype);
      Tensor ref = Tensor::empty(shape, DType::boolean);
      kernels::cpu::attn_mask(logits, ref);
      Tensor out = Tensor::empty(shape, DType::boolean, Device::cuda());
      test::poison(out);
      kernels::attn_mask(test::to_cuda(logits, dtype), out);
      const Tensor host = out.to(Device::cpu());
      EXPECT_EQ(std::memcmp(host.raw_data(), ref.raw_data(), ref.nbytes()), 0)
          << "attn_mask " << shape.str() << " (" << dtype_name(dtype) << ", seed " << test::seed() << ")";
    }
  }
}

TEST(AttnMaskCuda, RejectsBadArguments) {
  MFUSER_REQUIRE_CUDA();
  const Tensor logits = Tensor::zeros({2, 3}, DType::bf16, Device::cuda());
  Tensor out = Tensor::empty({2, 3}, DType::boolean, Device::cuda());
  EXPECT_NO_THROW(kernels::attn_mask(logits, out));
  Tensor host_out = Tensor::empty({2, 3}, DType::boolean);
  EXPECT_THROW(kernels::attn_mask(logits, host_out), Error);  // mixed devices
  Tensor float_out = Tensor::empty({2, 3}, DType::bf16, Device::cuda());
  EXPECT_THROW(kernels::attn_mask(logits, float_out), Error);
  const Tensor f16 = Tensor::zeros({2, 3}, DType::f16, Device::cuda());
  EXPECT_THROW(kernels::attn_mask(f16, out), Error);
}

}  // namespace
}  // namespace mfuser
