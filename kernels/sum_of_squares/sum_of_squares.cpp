// CPU reference of the per-tensor sums of squares, and the device dispatch.
#include "kernels/sum_of_squares/sum_of_squares.h"

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

constexpr const char* kOp = "sum_of_squares";

void check_args(std::span<const Tensor> tensors) {
  for (const Tensor& t : tensors) {
    check_f32(kOp, "every tensor", t);
    check_same_device(kOp, {&tensors.front(), &t});
  }
}

}  // namespace

std::vector<double> cpu::sum_of_squares(std::span<const Tensor> tensors) {
  check_args(tensors);
  if (!tensors.empty()) check_host(kOp, tensors.front());
  std::vector<double> out(tensors.size());
  // One tensor per task, each summed in index order: the result is the plain loop's whatever the thread count.
  parallel_for(int64_t(tensors.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* x = tensors[size_t(i)].data<float>();
      double sum = 0;
      for (int64_t e = 0, n = tensors[size_t(i)].numel(); e < n; ++e) sum += double(x[e]) * double(x[e]);
      out[size_t(i)] = sum;
    }
  });
  return out;
}

std::vector<double> sum_of_squares(std::span<const Tensor> tensors) {
  check_args(tensors);
  // A conditional, not an if: without CUDA the macro is a throw-expression, which a value return cannot take.
  const bool on_cuda = !tensors.empty() && tensors.front().device().is_cuda();
  return on_cuda ? MFUSER_CUDA_KERNEL(cuda::sum_of_squares(tensors)) : cpu::sum_of_squares(tensors);
}

}  // namespace mfuser::kernels
