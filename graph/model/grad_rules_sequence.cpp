// Backward rules of the sequence-model Builder ops: the depthwise token conv and the selective scan of the
// Mamba (MVFuser) block, and the deformable-attention sampling of the pixel decoder.
#include "graph/model/builder.h"
#include "graph/model/grad_rules_util.h"
#include "kernels/dwconv1d/dwconv1d.h"
#include "kernels/msdeform_attn/msdeform_attn.h"
#include "kernels/selective_scan/selective_scan.h"

namespace mfuser::model::grad {

using detail::Ins;
using detail::Outs;

// One dwconv1d_backward node computing the wanted ones of grad_x, grad_weight, grad_bias. x is read (kept
// alive) only when the weight gradient is wanted: otherwise the output gradient, which has x's shape and is
// f32, stands in for it, since the kernel then reads only x's shape (grad_x needs just the weight and
// grad_out; grad_bias just grad_out, and the weight sums computed alongside it are discarded).
BackwardRule dwconv1d(ValueId x, ValueId weight, ValueId bias, ValueId out) {
  return [=](GradContext& c) {
    const bool want_w = c.wants(weight);
    std::vector<ValueId> inputs = {weight, c.grad(out)};
    if (want_w) inputs.push_back(x);
    detail::backward_node(c, "dwconv1d_backward", out, inputs, {{x, false}, {weight, false}, {bias, false}},
                          [want_w](Ins in, detail::Grads& g) {
                            kernels::dwconv1d_backward(want_w ? in[2] : in[1], in[0], in[1], g[0], g[1], g[2]);
                          });
  };
}

// One selective_scan_backward node. The kernel recomputes the states from the forward's inputs, so it reads
// all of them (u, delta, A, B, C, and D / delta_bias when given: they stay alive until the backward) and it
// always writes every gradient (grad_D / grad_delta_bias exactly when D / delta_bias exist): the unwanted ones
// are outputs nobody reads (the planner frees them right after the node); only the wanted ones are handed on.
// grad_delta_bias is only this op's own use of delta_bias: when the same weight also entered `delta` (MVFuser's
// dt_proj bias), that use's gradient arrives through its own rule and the two are summed by accumulate.
// delta_softplus is true, as Builder::selective_scan always runs it.
BackwardRule selective_scan(ValueId u, ValueId delta, ValueId A, ValueId B, ValueId C, ValueId D,
                            ValueId delta_bias, ValueId out) {
  return [=](GradContext& c) {
    Builder& b = c.builder();
    const bool has_d = D != kNoValue, has_bias = delta_bias != kNoValue;
    std::vector<ValueId> forward = {u, delta, A, B, C};
    if (has_d) forward.push_back(D);
    if (has_bias) forward.push_back(delta_bias);
    std::vector<ValueId> inputs = forward;
    inputs.push_back(c.grad(out));
    std::vector<graph::OutputSpec> outs;
    for (ValueId v : forward) outs.push_back(b.spec(v));
    const auto grads = b.graph().add("selective_scan_backward", c.name(out), inputs, outs, [=](Ins in, Outs o) {
      static const Tensor kNone;
      Tensor none_d, none_bias;
      const size_t bias_at = has_d ? 6 : 5;
      const Tensor& d = has_d ? in[5] : kNone;
      const Tensor& bias = has_bias ? in[bias_at] : kNone;
      Tensor& gd = has_d ? o[5] : none_d;
      Tensor& gbias = has_bias ? o[bias_at] : none_bias;
      kernels::selective_scan_backward(in[0], in[1], in[2], in[3], in[4], d, bias, in[in.size() - 1], o[0], o[1],
                                       o[2], o[3], o[4], gd, gbias, /*delta_softplus=*/true);
    });
    for (size_t k = 0; k < forward.size(); ++k) c.accumulate(forward[k], grads[k]);  // skips the unwanted
  };
}

// One msdeform_attn_backward node: it reads the forward's value, locations and attention weights (kept alive
// until the backward) and the integer level tables (build-time constants, no gradient), and always writes all
// three gradients; the unwanted ones are outputs nobody reads.
BackwardRule msdeform_attn(ValueId value, ValueId spatial_shapes, ValueId level_start_index, ValueId locations,
                           ValueId weights, ValueId out) {
  return [=](GradContext& c) {
    Builder& b = c.builder();
    const std::vector<ValueId> inputs = {value, spatial_shapes, level_start_index, locations, weights, c.grad(out)};
    const std::vector<graph::OutputSpec> outs = {b.spec(value), b.spec(locations), b.spec(weights)};
    const auto grads = b.graph().add("msdeform_attn_backward", c.name(out), inputs, outs, [](Ins in, Outs o) {
      kernels::msdeform_attn_backward(in[0], in[1], in[2], in[3], in[4], in[5], o[0], o[1], o[2]);
    });
    c.accumulate(value, grads[0]);
    c.accumulate(locations, grads[1]);
    c.accumulate(weights, grads[2]);
  };
}

}  // namespace mfuser::model::grad
