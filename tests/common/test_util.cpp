#include "tests/common/test_util.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

namespace mfuser::test {

uint64_t seed() {
  static const uint64_t value = [] {
    const char* env = std::getenv("MFUSER_SEED");
    const uint64_t s = env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
    std::printf("[mfuser test] seed %llu (set MFUSER_SEED to reproduce)\n", static_cast<unsigned long long>(s));
    return s;
  }();
  return value;
}

std::mt19937_64& rng() {
  static std::mt19937_64 engine(seed());
  return engine;
}

void fill_uniform(Tensor& t, float lo, float hi) {
  MFUSER_CHECK(t.device().is_cpu() && is_floating(t.dtype()), "fill_uniform needs a host float tensor, got ", t.str());
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = dist(rng());
    switch (t.dtype()) {
      case DType::bf16: t.data<bf16_t>()[i] = float_to_bf16(v); break;
      case DType::f16: t.data<f16_t>()[i] = float_to_f16(v); break;
      default: t.data<float>()[i] = v; break;
    }
  }
}

void poison(Tensor& t) {
  if (t.nbytes() == 0) return;
  if (t.device().is_cpu()) {
    std::memset(t.raw_data(), 0xff, t.nbytes());
  } else {
    Tensor host = Tensor::empty(t.shape(), t.dtype());
    std::memset(host.raw_data(), 0xff, host.nbytes());
    t.copy_from(host);
  }
}

double value_at(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::bf16: return bf16_to_float(t.data<bf16_t>()[i]);
    case DType::f16: return f16_to_float(t.data<f16_t>()[i]);
    case DType::f32: return t.data<float>()[i];
    default: MFUSER_CHECK(false, "compare: not a float tensor: ", t.str());
  }
  return 0;
}

ErrorStats compare(const Tensor& out_any, const Tensor& ref_any) {
  MFUSER_CHECK(out_any.numel() == ref_any.numel(), "compare: ", out_any.str(), " vs ", ref_any.str());
  const Tensor out = out_any.device().is_cpu() ? out_any : out_any.to(Device::cpu());
  const Tensor ref = ref_any.device().is_cpu() ? ref_any : ref_any.to(Device::cpu());
  ErrorStats e;
  double diff2 = 0, ref2 = 0;
  for (int64_t i = 0; i < out.numel(); ++i) {
    const double o = value_at(out, i), r = value_at(ref, i);
    if (!std::isfinite(o)) {
      ++e.nonfinite;
      continue;
    }
    diff2 += (o - r) * (o - r);
    ref2 += r * r;
    e.max_abs = std::max(e.max_abs, std::fabs(o - r));
  }
  e.diff_l2 = std::sqrt(diff2);
  e.ref_l2 = std::sqrt(ref2);
  e.rel_l2 = ref2 > 0 ? e.diff_l2 / e.ref_l2 : e.diff_l2;
  return e;
}

std::string describe(const ErrorStats& e) {
  return str_cat("rel_l2 ", e.rel_l2, ", max_abs ", e.max_abs, ", non-finite ", e.nonfinite);
}

std::string golden_path(const std::string& op) {
  const char* dir = std::getenv("MFUSER_GOLDEN_DIR");
  MFUSER_CHECK(dir, "MFUSER_GOLDEN_DIR is not set: run this test through ctest, which generates the golden data");
  return str_cat(dir, "/", op, ".safetensors");
}

}  // namespace mfuser::test
