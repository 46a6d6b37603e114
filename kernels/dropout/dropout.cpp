// CPU reference of dropout / DropPath, and the device dispatch.
#include "kernels/dropout/dropout.h"

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

constexpr const char* kOp = "dropout";

void check_args(const Tensor& x, const Tensor& seed, const Tensor& out, const DropoutMask& mask) {
  check_float(kOp, "x", x);
  check_float_like(kOp, "out", out, x);
  check_shape(kOp, "out", out, x.shape());
  MFUSER_CHECK(seed.defined() && seed.dtype() == DType::i64 && seed.numel() == 1, kOp, ": seed must be i64 [1], got ",
               seed.defined() ? seed.str() : std::string("undefined"));
  check_same_device(kOp, {&x, &seed, &out});
  MFUSER_CHECK(mask.p >= 0.f && mask.p < 1.f, kOp, ": p must be in [0, 1), got ", mask.p);
  MFUSER_CHECK(mask.inner >= 1 && mask.units >= 0, kOp, ": inner must be >= 1 and units >= 0, got ", mask.inner, ", ",
               mask.units);
}

}  // namespace

void cpu::dropout(const Tensor& x, const Tensor& seed, Tensor& out, const DropoutMask& mask) {
  check_args(x, seed, out, mask);
  check_host(kOp, x);
  const int64_t n = x.numel();
  const int64_t units = dropout_units(mask, n);
  const uint64_t key = dropout_key(uint64_t(seed.data<int64_t>()[0]), mask.salt);
  const float scale = 1.f / (1.f - mask.p);
  const float* in = x.data<float>();
  float* o = out.data<float>();
  parallel_for(n, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      o[i] = dropout_keeps(key, uint64_t((i / mask.inner) % units), mask.p) ? in[i] * scale : 0.f;
  });
}

void dropout(const Tensor& x, const Tensor& seed, Tensor& out, const DropoutMask& mask) {
  check_args(x, seed, out, mask);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::dropout(x, seed, out, mask));
  cpu::dropout(x, seed, out, mask);
}

}  // namespace mfuser::kernels
