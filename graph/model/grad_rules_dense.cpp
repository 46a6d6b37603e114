// Backward rules of the dense and element-wise Builder ops.
#include "graph/model/builder.h"
#include "graph/model/grad_rules_util.h"
#include "kernels/attention/attention.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/gemm/gemm.h"
#include "kernels/softmax/softmax.h"

namespace mfuser::model::grad {

using detail::Ins;
using detail::Outs;

// One linear_backward node computing the wanted ones of grad_x, grad_weight, grad_bias; x is read (kept
// alive) only when the weight gradient is wanted.
BackwardRule linear(ValueId x, ValueId weight, ValueId bias, ValueId y) {
  return [=](GradContext& c) {
    const bool want_w = c.wants(weight);
    std::vector<ValueId> inputs = {weight, c.grad(y)};
    if (want_w) inputs.push_back(x);
    detail::backward_node(c, "linear_backward", y, inputs, {{x, false}, {weight, false}, {bias, false}},
                          [want_w](Ins in, detail::Grads& g) {
                            kernels::linear_backward(want_w ? in[2] : Tensor(), in[0], in[1], g[0], g[1], g[2]);
                          });
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
    c.accumulate(b_in, b.graph().add1("add_backward", c.name(out), {g}, b.spec(b_in),
                                      [](Ins in, Outs o) {
                                        Tensor none;
                                        kernels::add_backward(in[0], none, o[0]);
                                      }));
  };
}

// out[i] = alpha * x[i] @ op(y[i]) over the batch (Builder::matmul: dense row-major matrices, equal batch
// dims, op(y) = y or y^T with trans_b). One matmul_backward node running one batched gemm per wanted gradient:
//   grad_x [M, K] = alpha * G @ op(y)^T:  G @ y^T (y [K, N]), or G @ y (trans_b, y [N, K]);
//   grad_y        = alpha * op(x)...:     x^T @ G [K, N], or G^T @ x [N, K] (trans_b).
// y is read (kept alive) only when grad_x is wanted, x only when grad_y is.
BackwardRule matmul(ValueId x, ValueId y, ValueId out, const kernels::GemmParams& params) {
  const kernels::GemmParams p = params;
  MFUSER_CHECK(!p.trans_a && p.beta == 0.f, "matmul backward: only the Builder's forward (no trans_a, beta 0)");
  return [=](GradContext& c) {
    const bool want_x = c.wants(x), want_y = c.wants(y);
    Builder& b = c.builder();
    std::vector<ValueId> inputs = {c.grad(out)};
    if (want_x) inputs.push_back(y);
    if (want_y) inputs.push_back(x);
    std::vector<graph::OutputSpec> outs;
    if (want_x) outs.push_back(b.spec(x));
    if (want_y) outs.push_back(b.spec(y));
    const auto grads = b.graph().add("matmul_backward", c.name(out), inputs, outs, [=](Ins in, Outs o) {
      size_t k = 0;
      if (want_x) {
        kernels::GemmParams q;  // [M, N] @ op(y)^T -> [M, K]
        q.m = p.m;
        q.n = p.k;
        q.k = p.n;
        q.trans_b = !p.trans_b;
        q.alpha = p.alpha;
        q.batch = p.batch;
        q.stride_a = p.stride_c;
        q.stride_b = p.stride_b;
        q.stride_c = p.stride_a;
        kernels::gemm(in[0], in[1], o[k++], q);
      }
      if (want_y) {
        const Tensor& xv = in[want_x ? 2 : 1];
        kernels::GemmParams q;
        q.trans_a = true;
        q.alpha = p.alpha;
        q.batch = p.batch;
        q.stride_c = p.stride_b;
        if (p.trans_b) {  // G^T [N, M] @ x [M, K] -> [N, K]
          q.m = p.n;
          q.n = p.k;
          q.k = p.m;
          q.stride_a = p.stride_c;
          q.stride_b = p.stride_a;
          kernels::gemm(in[0], xv, o[k], q);
        } else {  // x^T [K, M] @ G [M, N] -> [K, N]
          q.m = p.k;
          q.n = p.n;
          q.k = p.m;
          q.stride_a = p.stride_a;
          q.stride_b = p.stride_c;
          kernels::gemm(xv, in[0], o[k], q);
        }
      }
    });
    size_t k = 0;
    if (want_x) c.accumulate(x, grads[k++]);
    if (want_y) c.accumulate(y, grads[k++]);
  };
}

// out = a * b_in (b_in broadcast onto a): grad_a = G * b, grad_b = (G * a) summed over b's broadcast dims.
// One mul_backward node; it reads both forward inputs (the kernel's contract needs both).
BackwardRule mul(ValueId a, ValueId b_in, ValueId out) {
  return [=](GradContext& c) {
    const bool want_a = c.wants(a), want_b = c.wants(b_in);
    Builder& b = c.builder();
    std::vector<graph::OutputSpec> outs;
    if (want_a) outs.push_back(b.spec(a));
    if (want_b) outs.push_back(b.spec(b_in));
    const auto grads =
        b.graph().add("mul_backward", c.name(out), {a, b_in, c.grad(out)}, outs, [=](Ins in, Outs o) {
          Tensor none_a, none_b;
          size_t k = 0;
          Tensor& ga = want_a ? o[k++] : none_a;
          Tensor& gb = want_b ? o[k++] : none_b;
          kernels::mul_backward(in[0], in[1], in[2], ga, gb);
        });
    size_t k = 0;
    if (want_a) c.accumulate(a, grads[k++]);
    if (want_b) c.accumulate(b_in, grads[k++]);
  };
}

// out = x * factor + bias: grad_x = G * factor (the bias is a constant). Saves nothing.
BackwardRule scale(ValueId x, ValueId out, float factor) {
  return [=](GradContext& c) {
    Builder& b = c.builder();
    c.accumulate(x, b.graph().add1("scale_backward", c.name(out), {c.grad(out)}, b.spec(x),
                                   [factor](Ins in, Outs o) { kernels::scale_backward(in[0], o[0], factor); }));
  };
}

// grad_x = G * f'(x), from the forward's input x (kept alive).
BackwardRule activation(ValueId x, ValueId out, kernels::Activation kind) {
  return [=](GradContext& c) {
    Builder& b = c.builder();
    c.accumulate(x, b.graph().add1("activation_backward", c.name(out), {x, c.grad(out)}, b.spec(x),
                                   [kind](Ins in, Outs o) { kernels::activation_backward(in[0], in[1], o[0], kind); }));
  };
}

BackwardRule dropout(ValueId x, ValueId seed, ValueId out, const kernels::DropoutMask& mask) {
  return [=](GradContext& c) {
    Builder& b = c.builder();
    c.accumulate(x, b.graph().add1("dropout_backward", c.name(out), {c.grad(out), seed}, b.spec(x),
                                   [mask](Ins in, Outs o) { kernels::dropout(in[0], in[1], o[0], mask); }));
  };
}

// grad_x = y * (G - rowsum(G * y)), from the forward's OUTPUT y (kept alive; x and the mask are not read).
// The mask is a constant here: Builder::softmax does not record it as an input, so it gets no gradient.
BackwardRule softmax(ValueId x, ValueId mask, ValueId out) {
  (void)mask;
  return [=](GradContext& c) {
    Builder& b = c.builder();
    c.accumulate(x, b.graph().add1("softmax_backward", c.name(out), {out, c.grad(out)}, b.spec(x),
                                   [](Ins in, Outs o) { kernels::softmax_backward(in[0], in[1], o[0]); }));
  };
}

// One attention_backward node: it always computes grad_q, grad_k and grad_v (the kernel's contract), and only
// the wanted ones are handed on. It reads q, k, v and the masks (constants: no gradient), not the forward's
// output: the kernel recomputes the probabilities anyway, and the softmax correction from P * dP costs Lk
// extra products per query row instead of keeping the whole [B, H, Lq, D] output alive through the backward.
BackwardRule attention(ValueId q, ValueId k, ValueId v, ValueId out, bool causal, ValueId bool_mask,
                       ValueId float_mask) {
  return [=](GradContext& c) {
    Builder& b = c.builder();
    const bool has_bool = bool_mask != graph::kNoValue, has_float = float_mask != graph::kNoValue;
    std::vector<ValueId> inputs = {q, k, v, c.grad(out)};
    if (has_bool) inputs.push_back(bool_mask);
    if (has_float) inputs.push_back(float_mask);
    const auto grads = b.graph().add(
        "attention_backward", c.name(out), inputs,
        {b.spec(q), b.spec(k), b.spec(v)},
        [=](Ins in, Outs o) {
          const Tensor none;
          kernels::attention_backward(in[0], in[1], in[2], none, in[3], o[0], o[1], o[2], causal,
                                      has_bool ? in[4] : none, has_float ? in[has_bool ? 5 : 4] : none);
        });
    c.accumulate(q, grads[0]);
    c.accumulate(k, grads[1]);
    c.accumulate(v, grads[2]);
  };
}

// The ids are integers (no gradient); the table's gradient would be a scatter-add of G's rows into [V, D],
// for which there is no backward kernel yet: asking for it fails loudly instead of dropping it.
BackwardRule embedding(ValueId ids, ValueId table, ValueId out) {
  (void)ids;
  return [=](GradContext& c) {
    if (!c.wants(table)) return;
    const Graph& g = c.builder().graph();
    throw Error(str_cat("backward: embedding '", g.value(out).name, "': the gradient of its table '",
                        g.value(table).name,
                        "' is not implemented (no embedding_backward / scatter-add kernel); freeze the table and "
                        "everything it is computed from"));
  };
}

}  // namespace mfuser::model::grad
