// cast: element-wise conversion between the floating dtypes (f32, bf16, f16).
//
// Contract: `src` and `dst` have the same number of elements and live on the same device; dst's dtype is the
// target. Rounding to bf16/f16 is round-to-nearest-even, NaN stays NaN, overflow to f16 becomes inf (as
// PyTorch's .to()). Same-dtype casts are plain copies.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void cast(const Tensor& src, Tensor& dst);  // dispatches on the device

namespace cpu {
void cast(const Tensor& src, Tensor& dst);
}
namespace cuda {
void cast(const Tensor& src, Tensor& dst);
}

// Convenience: a new tensor of `dtype` on src's device.
Tensor cast_to(const Tensor& src, DType dtype);

}  // namespace mfuser::kernels
