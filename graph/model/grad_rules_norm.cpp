#include "graph/model/builder.h"
#include "graph/model/grad_rules.h"

namespace mfuser::model::grad {

// PLACEHOLDER (development only): every rule below is replaced by its real one.
BackwardRule layernorm(ValueId x, ValueId weight, ValueId bias, ValueId out, float eps) {
  (void)x;
  (void)weight;
  (void)bias;
  (void)eps;
  return unsupported(out, "layernorm (placeholder)");
}

BackwardRule groupnorm(ValueId x, ValueId weight, ValueId bias, ValueId out, int num_groups, float eps) {
  (void)x;
  (void)weight;
  (void)bias;
  (void)num_groups;
  (void)eps;
  return unsupported(out, "groupnorm (placeholder)");
}

BackwardRule batchnorm_train(ValueId x, ValueId weight, ValueId bias, ValueId out, ValueId save_mean,
                             ValueId save_rstd) {
  (void)x;
  (void)weight;
  (void)bias;
  (void)save_mean;
  (void)save_rstd;
  return unsupported(out, "batchnorm_train (placeholder)");
}

BackwardRule rmsnorm_gated(ValueId x, ValueId z, ValueId weight, ValueId out, float eps) {
  (void)x;
  (void)z;
  (void)weight;
  (void)eps;
  return unsupported(out, "rmsnorm_gated (placeholder)");
}

BackwardRule l2norm(ValueId x, ValueId out, int dim) {
  (void)x;
  (void)dim;
  return unsupported(out, "l2norm (placeholder)");
}

}  // namespace mfuser::model::grad
