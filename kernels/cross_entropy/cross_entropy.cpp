// CPU reference of the softmax cross-entropy loss and its backward, and the device dispatch.
#include "kernels/cross_entropy/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

// Target shape [N, d1, ...] of logits [N, C, d1, ...].
Shape target_shape(const Tensor& logits) {
  std::vector<int64_t> dims(logits.shape().dims().begin(), logits.shape().dims().end());
  dims.erase(dims.begin() + 1);
  return Shape(std::span<const int64_t>(dims));
}

void check_inputs(const char* op, const Tensor& logits, const Tensor& target, const Tensor& weight) {
  check_f32(op, "logits", logits);
  MFUSER_CHECK(logits.ndim() >= 2, op, ": logits ", logits.str(), ": must be [N, C, ...]");
  MFUSER_CHECK(logits.dim(1) > 0, op, ": logits ", logits.str(), ": needs at least one class");
  MFUSER_CHECK(target.defined() && target.dtype() == DType::i64, op, ": target must be i64, got ",
               target.defined() ? target.str() : "undefined");
  check_shape(op, "target", target, target_shape(logits));
  check_optional_f32(op, "weight", weight, Shape{logits.dim(1)});
  check_same_device(op, {&logits, &target, &weight});
}

void check_forward(const Tensor& logits, const Tensor& target, const Tensor& weight, const Tensor& loss) {
  constexpr const char* op = "cross_entropy";
  check_inputs(op, logits, target, weight);
  check_f32(op, "loss", loss);
  check_shape(op, "loss", loss, Shape{});
  check_same_device(op, {&logits, &loss});
}

void check_backward(const Tensor& logits, const Tensor& target, const Tensor& weight, const Tensor& grad_loss,
                    const Tensor& grad_logits) {
  constexpr const char* op = "cross_entropy_backward";
  check_inputs(op, logits, target, weight);
  MFUSER_CHECK(grad_loss.defined(), op, ": grad_loss is undefined");
  check_f32(op, "grad_loss", grad_loss);
  check_shape(op, "grad_loss", grad_loss, Shape{});
  check_f32(op, "grad_logits", grad_logits);
  check_shape(op, "grad_logits", grad_logits, logits.shape());
  check_same_device(op, {&logits, &grad_loss, &grad_logits});
  MFUSER_CHECK(grad_logits.raw_data() != logits.raw_data() || logits.numel() == 0, op,
               ": grad_logits may not alias logits (the softmax is recomputed from them)");
}

// Per-position view shared by forward and backward: position i = n * S + s reads class c at
// ((n * C + c) * S + s).
struct Layout {
  int64_t classes, inner = 1, positions;
  explicit Layout(const Tensor& logits) : classes(logits.dim(1)) {
    for (int d = 2; d < logits.ndim(); ++d) inner *= logits.dim(d);
    positions = logits.dim(0) * inner;
  }
  int64_t base(int64_t i) const { return (i / inner) * classes * inner + i % inner; }
};

// Validates every target (before anything is written) and returns the reduction's denominator.
double denominator(const char* op, const Layout& l, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                   CrossEntropyReduction reduction) {
  const int64_t* t = target.data<int64_t>();
  const float* w = weight.defined() ? weight.data<float>() : nullptr;
  double sum = 0;
  for (int64_t i = 0; i < l.positions; ++i) {
    if (t[i] == ignore_index) continue;
    MFUSER_CHECK(t[i] >= 0 && t[i] < l.classes, op, ": target ", t[i], " at flat position ", i, " of ", target.str(),
                 " is neither a class in [0, ", l.classes, ") nor ignore_index ", ignore_index);
    sum += w ? w[t[i]] : 1.0;
  }
  return reduction == CrossEntropyReduction::weighted_mean ? sum : double(l.positions);
}

// logsumexp of one position's logits (stride `inner`), max-shifted so large logits do not overflow.
double logsumexp(const float* x, int64_t classes, int64_t inner) {
  float max = x[0];
  for (int64_t c = 1; c < classes; ++c) max = std::max(max, x[c * inner]);
  double sum = 0;
  for (int64_t c = 0; c < classes; ++c) sum += std::exp(double(x[c * inner]) - max);
  return max + std::log(sum);
}

int64_t grain(const Layout& l) { return std::max<int64_t>(1, (1 << 14) / l.classes); }

}  // namespace

void cpu::cross_entropy(const Tensor& logits, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                        CrossEntropyReduction reduction, Tensor& loss) {
  constexpr const char* op = "cross_entropy";
  check_forward(logits, target, weight, loss);
  check_host(op, logits);
  const Layout l(logits);
  const double denom = denominator(op, l, target, weight, ignore_index, reduction);
  const float* x = logits.data<float>();
  const int64_t* t = target.data<int64_t>();
  const float* w = weight.defined() ? weight.data<float>() : nullptr;
  // Per-position terms first, summed serially afterwards: the result does not depend on the thread count.
  std::vector<double> terms(size_t(l.positions), 0.0);
  parallel_for(l.positions, grain(l), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (t[i] == ignore_index) continue;
      const float* xi = x + l.base(i);
      terms[size_t(i)] = (w ? w[t[i]] : 1.0) * (logsumexp(xi, l.classes, l.inner) - xi[t[i] * l.inner]);
    }
  });
  double sum = 0;
  for (double v : terms) sum += v;
  loss.data<float>()[0] = float(sum / denom);
}

void cpu::cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& weight,
                                 int64_t ignore_index, CrossEntropyReduction reduction, const Tensor& grad_loss,
                                 Tensor& grad_logits) {
  constexpr const char* op = "cross_entropy_backward";
  check_backward(logits, target, weight, grad_loss, grad_logits);
  check_host(op, logits);
  const Layout l(logits);
  const double scale =
      double(grad_loss.data<float>()[0]) / denominator(op, l, target, weight, ignore_index, reduction);
  const float* x = logits.data<float>();
  const int64_t* t = target.data<int64_t>();
  const float* w = weight.defined() ? weight.data<float>() : nullptr;
  float* g = grad_logits.data<float>();
  parallel_for(l.positions, grain(l), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* xi = x + l.base(i);
      float* gi = g + l.base(i);
      if (t[i] == ignore_index) {
        for (int64_t c = 0; c < l.classes; ++c) gi[c * l.inner] = 0.f;
        continue;
      }
      const double lse = logsumexp(xi, l.classes, l.inner);
      const double f = scale * (w ? w[t[i]] : 1.0);
      for (int64_t c = 0; c < l.classes; ++c)
        gi[c * l.inner] = float(f * (std::exp(double(xi[c * l.inner]) - lse) - (c == t[i] ? 1.0 : 0.0)));
    }
  });
}

void cross_entropy(const Tensor& logits, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                   CrossEntropyReduction reduction, Tensor& loss) {
  check_forward(logits, target, weight, loss);
  if (logits.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::cross_entropy(logits, target, weight, ignore_index, reduction, loss));
  cpu::cross_entropy(logits, target, weight, ignore_index, reduction, loss);
}

void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                            CrossEntropyReduction reduction, const Tensor& grad_loss, Tensor& grad_logits) {
  check_backward(logits, target, weight, grad_loss, grad_logits);
  if (logits.device().is_cuda())
    return MFUSER_CUDA_KERNEL(
        cuda::cross_entropy_backward(logits, target, weight, ignore_index, reduction, grad_loss, grad_logits));
  cpu::cross_entropy_backward(logits, target, weight, ignore_index, reduction, grad_loss, grad_logits);
}

}  // namespace mfuser::kernels
