// Backward rules of the dense and element-wise Builder ops.
#include "graph/model/builder.h"
#include "graph/model/grad_rules.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/gemm/gemm.h"

namespace mfuser::model::grad {

namespace {
using Ins = std::span<const Tensor>;
using Outs = std::span<Tensor>;
}  // namespace

// One linear_backward node computing the wanted ones of grad_x, grad_weight, grad_bias; x is read (kept
// alive) only when the weight gradient is wanted.
BackwardRule linear(ValueId x, ValueId weight, ValueId bias, ValueId y) {
  return [=](GradContext& c) {
    const bool want_x = c.wants(x), want_w = c.wants(weight), want_b = c.wants(bias);
    Builder& b = c.builder();
    std::vector<ValueId> inputs = {weight, c.grad(y)};
    if (want_w) inputs.push_back(x);
    std::vector<graph::OutputSpec> outs;
    for (auto [wanted, v] : {std::pair{want_x, x}, {want_w, weight}, {want_b, bias}})
      if (wanted) outs.push_back({b.shape(v), DType::f32});
    const auto grads = b.graph().add("linear_backward", c.name(y), inputs, outs, [=](Ins in, Outs o) {
      Tensor none_x, none_w, none_b;
      size_t k = 0;
      Tensor& gx = want_x ? o[k++] : none_x;
      Tensor& gw = want_w ? o[k++] : none_w;
      Tensor& gb = want_b ? o[k++] : none_b;
      kernels::linear_backward(want_w ? in[2] : Tensor(), in[0], in[1], gx, gw, gb);
    });
    size_t k = 0;
    if (want_x) c.accumulate(x, grads[k++]);
    if (want_w) c.accumulate(weight, grads[k++]);
    if (want_b) c.accumulate(bias, grads[k++]);
  };
}

// grad_a = grad_out; grad_b = grad_out summed over b's broadcast dims.
BackwardRule add(ValueId a, ValueId b_in, ValueId out) {
  return [=](GradContext& c) {
    Builder& b = c.builder();
    const ValueId g = c.grad(out);
    c.accumulate(a, g);
    if (!c.wants(b_in)) return;
    if (b.shape(b_in) == b.shape(out)) return c.accumulate(b_in, g);
    c.accumulate(b_in, b.graph().add1("add_backward", c.name(out), {g}, {b.shape(b_in), DType::f32},
                                      [](Ins in, Outs o) {
                                        Tensor none;
                                        kernels::add_backward(in[0], none, o[0]);
                                      }));
  };
}

// PLACEHOLDER (development only): every rule below is replaced by its real one.
BackwardRule matmul(ValueId x, ValueId y, ValueId out, const kernels::GemmParams& params) {
  (void)x;
  (void)y;
  (void)params;
  return unsupported(out, "matmul (placeholder)");
}

BackwardRule mul(ValueId a, ValueId b, ValueId out) {
  (void)a;
  (void)b;
  return unsupported(out, "mul (placeholder)");
}

BackwardRule scale(ValueId x, ValueId out, float factor) {
  (void)x;
  (void)factor;
  return unsupported(out, "scale (placeholder)");
}

BackwardRule activation(ValueId x, ValueId out, kernels::Activation kind) {
  (void)x;
  (void)kind;
  return unsupported(out, "activation (placeholder)");
}

BackwardRule softmax(ValueId x, ValueId mask, ValueId out) {
  (void)x;
  (void)mask;
  return unsupported(out, "softmax (placeholder)");
}

BackwardRule attention(ValueId q, ValueId k, ValueId v, ValueId out, bool causal, ValueId bool_mask,
                       ValueId float_mask) {
  (void)q;
  (void)k;
  (void)v;
  (void)causal;
  (void)bool_mask;
  (void)float_mask;
  return unsupported(out, "attention (placeholder)");
}

BackwardRule embedding(ValueId ids, ValueId table, ValueId out) {
  (void)ids;
  (void)table;
  return unsupported(out, "embedding (placeholder)");
}

}  // namespace mfuser::model::grad
