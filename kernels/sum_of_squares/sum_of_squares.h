// sum_of_squares: the squared L2 norm of each of a list of tensors, in double (the trainer's gradient norm).
//
// Contract: `tensors` are f32, any shapes (zero-size allowed), all on one device. Returns one double per tensor,
// in order: sum over its elements of double(x) * double(x). The square of an f32 is exact in double, so only the
// additions round; a NaN or an Inf element makes that tensor's entry NaN or Inf and leaves the others alone, so
// the caller can name the first non-finite tensor. An empty list gives an empty result.
//
// Order of the additions (both backends repeat bit for bit, run to run):
//   - CPU reference: each tensor's squares added in index order, a plain double loop;
//   - CUDA: every tensor cut into chunks of a fixed size, each chunk summed by one block (a fixed shuffle tree),
//     then each tensor's chunk partials summed by one block in a fixed order. One launch per pass for all the
//     tensors; the result comes back in one device-to-host copy of n doubles.
// The two orders differ, so CPU and CUDA agree to rounding: relative error below n_elements * 2^-53 per entry.
#pragma once

#include <span>
#include <vector>

#include "runtime/tensor.h"

namespace mfuser::kernels {

std::vector<double> sum_of_squares(std::span<const Tensor> tensors);

namespace cpu {
std::vector<double> sum_of_squares(std::span<const Tensor> tensors);
}
// The CUDA launcher (sum_of_squares.cu); call it through the dispatcher above, which checks the arguments.
namespace cuda {
std::vector<double> sum_of_squares(std::span<const Tensor> tensors);
}

}  // namespace mfuser::kernels
