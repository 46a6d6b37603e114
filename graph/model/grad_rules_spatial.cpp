// Backward rules of the convolution, resampling and layout Builder ops.
#include "graph/model/builder.h"
#include "graph/model/grad_rules_util.h"
#include "kernels/conv2d/conv2d.h"
#include "kernels/conv_transpose2d/conv_transpose2d.h"
#include "kernels/layout/layout.h"
#include "kernels/maxpool2d/maxpool2d.h"
#include "kernels/resize/resize.h"

namespace mfuser::model::grad {

namespace {

using detail::Ins;
using detail::Outs;

// The wanted ones of grad_x, grad_weight, grad_bias of a convolution whose backward kernel reads x, weight and
// grad_out (in that order: the node's inputs) and takes the three optional gradients.
template <typename Backward>
void conv_like(GradContext& c, const char* op, ValueId x, ValueId weight, ValueId bias, ValueId out,
               Backward backward) {
  if (!c.wants(x) && !c.wants(weight) && !c.wants(bias)) return;
  // The kernels read x and weight even for the gradients that do not need them (shapes, argument checks), so
  // both are inputs: x stays alive when only grad_x is wanted, weight when only grad_weight is.
  detail::backward_node(c, op, out, {x, weight, c.grad(out)}, {{x, false}, {weight, false}, {bias, false}},
                        [backward](Ins in, detail::Grads& g) { backward(in[0], in[1], in[2], g[0], g[1], g[2]); });
}

}  // namespace

// One conv2d_backward node computing the wanted gradients; reads x, weight and the output gradient.
BackwardRule conv2d(ValueId x, ValueId weight, ValueId bias, ValueId out, int stride, int padding) {
  return [=](GradContext& c) {
    conv_like(c, "conv2d_backward", x, weight, bias, out,
              [stride, padding](const Tensor& xv, const Tensor& w, const Tensor& g, Tensor& gx, Tensor& gw,
                                Tensor& gb) { kernels::conv2d_backward(xv, w, g, gx, gw, gb, stride, padding); });
  };
}

// One conv_transpose2d_backward node computing the wanted gradients; reads x, weight and the output gradient.
BackwardRule conv_transpose2d(ValueId x, ValueId weight, ValueId bias, ValueId out) {
  return [=](GradContext& c) {
    conv_like(c, "conv_transpose2d_backward", x, weight, bias, out,
              [](const Tensor& xv, const Tensor& w, const Tensor& g, Tensor& gx, Tensor& gw, Tensor& gb) {
                kernels::conv_transpose2d_backward(xv, w, g, gx, gw, gb);
              });
  };
}

// grad_x: each 2x2 window's output gradient routed to its argmax (recomputed from x, which the node reads);
// kernel and stride are the kernel's defaults 2 / 2, as in Builder::maxpool2d.
BackwardRule maxpool2d(ValueId x, ValueId out) {
  return [=](GradContext& c) {
    Builder& b = c.builder();
    c.accumulate(x, b.graph().add1("maxpool2d_backward", c.name(out), {x, c.grad(out)}, b.spec(x),
                                   [](Ins in, Outs o) { kernels::maxpool2d_backward(in[0], in[1], o[0]); }));
  };
}

// grad_x from the output gradient alone (size-based steps, as Builder::resize_bilinear's forward): x is not read.
BackwardRule resize_bilinear(ValueId x, ValueId out) {
  return [=](GradContext& c) {
    Builder& b = c.builder();
    c.accumulate(x, b.graph().add1("resize_bilinear_backward", c.name(out), {c.grad(out)},
                                   b.spec(x),
                                   [](Ins in, Outs o) { kernels::resize_bilinear_backward(in[0], o[0]); }));
  };
}

// grad_x = the output gradient permuted back: inv[perm[i]] = i. Nothing from the forward is read.
BackwardRule permute(ValueId x, ValueId out, const std::vector<int>& perm) {
  std::vector<int> inv(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inv[size_t(perm[i])] = int(i);
  return [=](GradContext& c) {
    Builder& b = c.builder();
    c.accumulate(x, b.graph().add1("permute_backward", c.name(out), {c.grad(out)}, b.spec(x),
                                   [inv](Ins in, Outs o) { kernels::permute(in[0], o[0], inv); }));
  };
}

// Each input's gradient is its piece of the output gradient along `dim` (already normalized by the Builder).
// When the dims before `dim` are all 1 the pieces are contiguous: zero-copy row views of the output gradient.
// Otherwise one concat_backward node splits it (all pieces, the split kernel needs them; an unwanted piece dies
// right after the node). Nothing from the forward is read.
BackwardRule concat(const std::vector<ValueId>& xs, ValueId out, int dim) {
  return [=](GradContext& c) {
    Builder& b = c.builder();
    graph::Graph& g = b.graph();
    const ValueId grad = c.grad(out);
    if (xs.size() == 1) return c.accumulate(xs[0], grad);
    const Shape os = b.shape(out);
    int64_t outer = 1;
    for (int d = 0; d < dim; ++d) outer *= os[d];
    if (outer == 1) {
      const int64_t inner = os.numel() / os[dim];
      const ValueId rows = g.reshape(grad, {os[dim], inner}, c.name(out, ".rows"));
      int64_t begin = 0;
      for (size_t i = 0; i < xs.size(); ++i) {
        const Shape piece = b.shape(xs[i]);
        const int64_t end = begin + piece[dim];
        if (c.wants(xs[i])) {
          const ValueId slice = g.slice_rows(rows, begin, end, c.name(out, str_cat(".rows", i)));
          c.accumulate(xs[i], g.reshape(slice, piece, c.name(out, str_cat(".", i))));
        }
        begin = end;
      }
      return;
    }
    std::vector<graph::OutputSpec> outs;
    for (ValueId x : xs) outs.push_back(b.spec(x));
    const auto pieces = g.add("concat_backward", c.name(out), {grad}, outs,
                              [dim](Ins in, Outs o) { kernels::split(in[0], o, dim); });
    for (size_t i = 0; i < xs.size(); ++i) c.accumulate(xs[i], pieces[i]);
  };
}

// grad_x = the parts' gradients concatenated along `dim`; a part nothing downstream reads contributes a
// build-time zero constant of its shape. Nothing from the forward is read.
BackwardRule split(ValueId x, const std::vector<ValueId>& outs, int dim) {
  return [=](GradContext& c) {
    if (!c.wants(x)) return;
    Builder& b = c.builder();
    graph::Graph& g = b.graph();
    std::vector<ValueId> parts;
    for (ValueId part : outs) {
      ValueId grad = c.grad(part);
      // An unused part's gradient: zeros of its shape and dtype.
      if (grad == graph::kNoValue) grad = g.constant(c.name(part, ".zeros"), Tensor::zeros(b.shape(part), b.dtype(part)));
      parts.push_back(grad);
    }
    if (parts.size() == 1) return c.accumulate(x, parts[0]);
    // Named after the split node itself (its outputs are "<name>.k").
    const std::string name = g.nodes()[size_t(g.value(outs[0]).producer)].name + ".grad";
    c.accumulate(x, g.add1("split_backward", name, parts, b.spec(x),
                           [dim](Ins in, Outs o) { kernels::concat(in, o[0], dim); }));
  };
}

}  // namespace mfuser::model::grad
