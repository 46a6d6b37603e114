// The real-size model (ViT-L, 512x512 crop, random weights) on the CPU reference backend against the PyTorch
// oracle: the logits within 1e-4 and 99.99% of the pixels' classes in agreement. Label `slow`.
#include "tests/model/parity.h"

namespace mfuser {
namespace {

TEST(MfuserParityReal, ViTL512CropMatchesOracle) {
  const test::GoldenModel g = test::load_golden_model("vitl_512");
  // Every recorded module (190) within 1e-5 too: on these well-conditioned weights the oracle's own fp32 run is
  // ~2e-6 from its float64 run, and so are we.
  test::check_whole_model(g, /*module_tol=*/1e-5, /*logits_tol=*/1e-4, /*min_agreement=*/0.9999);
}

}  // namespace
}  // namespace mfuser
