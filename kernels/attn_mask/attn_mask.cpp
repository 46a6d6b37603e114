// CPU reference of attn_mask, and the device dispatch.
#include "kernels/attn_mask/attn_mask.h"

#include <cmath>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

constexpr const char* kOp = "attn_mask";

void check_args(const Tensor& logits, const Tensor& out) {
  check_float(kOp, "logits", logits);
  MFUSER_CHECK(logits.ndim() >= 1 && logits.dim(-1) >= 1, kOp, ": logits must be [..., N >= 1], got ", logits.str());
  MFUSER_CHECK(out.defined() && out.dtype() == DType::boolean, kOp, ": out must be boolean, got ", out.str());
  check_shape(kOp, "out", out, logits.shape());
  check_same_device(kOp, {&logits, &out});
}

}  // namespace

void cpu::attn_mask(const Tensor& logits, Tensor& out) {
  check_args(logits, out);
  check_host(kOp, logits);
  const int64_t n = logits.dim(-1), rows = logits.numel() / n;
  const float* x = logits.data<float>();
  bool* m = out.data<bool>();
  parallel_for(rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      bool all = true;
      for (int64_t j = r * n; j < (r + 1) * n; ++j) {
        m[j] = 1.f / (1.f + std::exp(-x[j])) < 0.5f;
        all = all && m[j];
      }
      if (all)
        for (int64_t j = r * n; j < (r + 1) * n; ++j) m[j] = false;
    }
  });
}

void attn_mask(const Tensor& logits, Tensor& out) {
  check_args(logits, out);
  if (logits.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::attn_mask(logits, out));
  cpu::attn_mask(logits, out);
}

}  // namespace mfuser::kernels
