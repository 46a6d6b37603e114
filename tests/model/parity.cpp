#include "tests/model/parity.h"

#include <cstdlib>

#include "kernels/layout/layout.h"

namespace mfuser::test {

GoldenModel load_golden_model(const std::string& name) {
  const char* root = std::getenv("MFUSER_GOLDEN_DIR");
  MFUSER_CHECK(root, "MFUSER_GOLDEN_DIR is not set: run this test through ctest, which generates the golden data");
  GoldenModel g;
  g.dir = str_cat(root, "/model_", name);
  const Config manifest = Config::load(g.dir + "/manifest.json");
  g.config = model::ModelConfig::from(manifest.section("config"));
  g.seed = std::to_string(manifest.get<int64_t>("seed"));
  g.golden = std::make_unique<SafetensorsReader>(g.dir + "/golden.safetensors");
  g.inputs = std::make_unique<SafetensorsReader>(g.dir + "/input.safetensors");
  return g;
}

ErrorStats compare_to_golden(const GoldenModel& g, const std::string& golden_name, const Tensor& ours,
                             const std::vector<int>& golden_perm) {
  Tensor ref = g.golden->view(golden_name);
  if (ref.ndim() == ours.ndim() + 1) {
    // A module called once per layer (the pixel decoder's post-norm) is recorded stacked; ours is the last call.
    const Shape stacked = ref.shape();
    ref = ref.slice_rows(stacked[0] - 1, stacked[0]).reshape(Shape(stacked.dims().subspan(1)));
  }
  if (!golden_perm.empty()) {
    Shape permuted = ref.shape();
    for (size_t i = 0; i < golden_perm.size(); ++i) permuted[int(i)] = ref.shape()[golden_perm[i]];
    Tensor out = Tensor::empty(permuted, ref.dtype());
    kernels::permute(ref, out, golden_perm);
    ref = out;
  }
  const Tensor host = ours.device().is_cpu() ? ours : ours.to(Device::cpu());
  EXPECT_EQ(host.shape(), ref.shape()) << golden_name;
  if (!(host.shape() == ref.shape())) return {1e30, 1e30, 0};
  return compare(host, ref);
}

void expect_matches_golden(const GoldenModel& g, const graph::Executor& ex, const std::string& our_name,
                           const std::string& golden_name, double tol, const std::vector<int>& golden_perm) {
  const ErrorStats e = compare_to_golden(g, golden_name, ex.get(our_name), golden_perm);
  std::printf("  %-56s %s\n", golden_name.c_str(), describe(e).c_str());
  EXPECT_LE(e.rel_l2, tol) << golden_name << " (ours: " << our_name << "): " << describe(e) << ", golden seed " << g.seed;
  EXPECT_EQ(e.nonfinite, 0) << golden_name;
}

}  // namespace mfuser::test
