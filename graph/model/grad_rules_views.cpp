// Backward rules of the zero-cost views, of cast and of the generic Builder::node.
#include "graph/model/builder.h"
#include "graph/model/grad_rules.h"

namespace mfuser::model::grad {

BackwardRule reshape(ValueId x, ValueId out) {
  return [=](GradContext& c) {
    Builder& b = c.builder();
    c.accumulate(x, b.reshape(c.grad(out), b.shape(x), c.name(out)));
  };
}

// Rows [begin, begin + n) of x: the gradient of x is zero outside them. The zero blocks are build-time
// constants around the row gradient, joined by one concat (no scatter kernel needed).
BackwardRule slice_rows(ValueId x, ValueId out, int64_t begin) {
  return [=](GradContext& c) {
    Builder& b = c.builder();
    const Shape xs = b.shape(x);
    const int64_t rows = b.shape(out)[0];
    std::vector<ValueId> parts;
    const auto zeros = [&](int64_t n, const char* where) {
      Shape s = xs;
      s[0] = n;
      parts.push_back(b.graph().constant(c.name(out, where), Tensor::zeros(s, b.dtype(x))));
    };
    if (begin > 0) zeros(begin, ".zeros_before");
    parts.push_back(c.grad(out));
    if (begin + rows < xs[0]) zeros(xs[0] - begin - rows, ".zeros_after");
    c.accumulate(x, parts.size() == 1 ? parts[0] : b.concat(parts, 0, c.name(out)));
  };
}

BackwardRule cast(ValueId x, ValueId out) {
  return [=](GradContext& c) { c.accumulate(x, c.grad(out)); };
}

BackwardRule unsupported(ValueId out, const std::string& op) {
  return [=](GradContext& c) {
    throw Error(str_cat("backward: op '", op, "' (node '", c.builder().graph().value(out).name,
                        "') has no backward rule, but a gradient must flow through it"));
  };
}

}  // namespace mfuser::model::grad
