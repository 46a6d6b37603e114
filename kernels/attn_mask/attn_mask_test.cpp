// attn_mask: against the tqdm head's mask computation in PyTorch, element for element.
#include "kernels/attn_mask/attn_mask.h"

#include <cstdio>

#include "loaders/safetensors.h"
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

}  // namespace
}  // namespace mfuser
