#include "graph/model/builder.h"
#include "graph/model/grad_rules.h"

namespace mfuser::model::grad {

// PLACEHOLDER (development only): every rule below is replaced by its real one.
BackwardRule dwconv1d(ValueId x, ValueId weight, ValueId bias, ValueId out) {
  (void)x;
  (void)weight;
  (void)bias;
  return unsupported(out, "dwconv1d (placeholder)");
}

BackwardRule selective_scan(ValueId u, ValueId delta, ValueId A, ValueId B, ValueId C, ValueId D,
                            ValueId delta_bias, ValueId out) {
  (void)u;
  (void)delta;
  (void)A;
  (void)B;
  (void)C;
  (void)D;
  (void)delta_bias;
  return unsupported(out, "selective_scan (placeholder)");
}

BackwardRule msdeform_attn(ValueId value, ValueId spatial_shapes, ValueId level_start_index, ValueId locations,
                           ValueId weights, ValueId out) {
  (void)value;
  (void)spatial_shapes;
  (void)level_start_index;
  (void)locations;
  (void)weights;
  return unsupported(out, "msdeform_attn (placeholder)");
}

}  // namespace mfuser::model::grad
