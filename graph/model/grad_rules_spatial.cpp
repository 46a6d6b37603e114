#include "graph/model/builder.h"
#include "graph/model/grad_rules.h"

namespace mfuser::model::grad {

// PLACEHOLDER (development only): every rule below is replaced by its real one.
BackwardRule conv2d(ValueId x, ValueId weight, ValueId bias, ValueId out, int stride, int padding) {
  (void)x;
  (void)weight;
  (void)bias;
  (void)stride;
  (void)padding;
  return unsupported(out, "conv2d (placeholder)");
}

BackwardRule conv_transpose2d(ValueId x, ValueId weight, ValueId bias, ValueId out) {
  (void)x;
  (void)weight;
  (void)bias;
  return unsupported(out, "conv_transpose2d (placeholder)");
}

BackwardRule maxpool2d(ValueId x, ValueId out) {
  (void)x;
  return unsupported(out, "maxpool2d (placeholder)");
}

BackwardRule resize_bilinear(ValueId x, ValueId out) {
  (void)x;
  return unsupported(out, "resize_bilinear (placeholder)");
}

BackwardRule permute(ValueId x, ValueId out, const std::vector<int>& perm) {
  (void)x;
  (void)perm;
  return unsupported(out, "permute (placeholder)");
}

BackwardRule concat(const std::vector<ValueId>& xs, ValueId out, int dim) {
  (void)xs;
  (void)dim;
  return unsupported(out, "concat (placeholder)");
}

BackwardRule split(ValueId x, const std::vector<ValueId>& outs, int dim) {
  (void)x;
  (void)dim;
  return unsupported(outs[0], "split (placeholder)");
}

}  // namespace mfuser::model::grad
