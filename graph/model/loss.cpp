// The training losses as graph nodes and their backward rules (see loss.h).
#include "graph/model/loss.h"

#include "kernels/cross_entropy/cross_entropy.h"
#include "kernels/elementwise/elementwise.h"

namespace mfuser::model {

namespace {

using Ins = std::span<const Tensor>;
using Outs = std::span<Tensor>;

constexpr int64_t kIgnoreIndex = 255;

void check_value(Builder& b, const char* fn, const std::string& name, const char* arg, ValueId v, DType dtype,
                 int ndim) {
  const graph::Value& value = b.graph().value(v);
  MFUSER_CHECK(value.dtype == dtype && value.shape.ndim() == ndim, fn, " '", name, "': ", arg, " '", value.name,
               "' must be ", dtype_name(dtype), " with ", ndim, " dims, got ", dtype_name(value.dtype),
               value.shape.str());
}

}  // namespace

ValueId mask_losses(Builder& b, ValueId cls_scores, ValueId mask_preds, ValueId gt_seg, ValueId candidates,
                    ValueId randoms, const MaskLossConfig& config, const std::string& name) {
  constexpr const char* fn = "mask_losses";
  check_value(b, fn, name, "cls_scores", cls_scores, DType::f32, 3);
  check_value(b, fn, name, "mask_preds", mask_preds, DType::f32, 4);
  check_value(b, fn, name, "gt_seg", gt_seg, DType::i64, 3);
  check_value(b, fn, name, "candidates", candidates, DType::f32, 3);
  check_value(b, fn, name, "randoms", randoms, DType::f32, 3);
  config.validate(str_cat(fn, " '", name, "'").c_str());
  const Shape cs = b.shape(cls_scores), ms = b.shape(mask_preds), ls = b.shape(gt_seg);
  const int64_t rows = cs[0] * cs[1];
  MFUSER_CHECK(cs[2] == config.num_classes + 1 && ms[0] == cs[0] && ms[1] == cs[1] && ls[0] == cs[0], fn, " '",
               name, "': cls_scores ", cs.str(), ", mask_preds ", ms.str(), " and gt_seg ", ls.str(),
               " do not fit [B, Q, K + 1 = ", config.num_classes + 1, "], [B, Q, h, w], [B, H, W]");
  const Shape want_candidates{rows, config.num_candidates(), 2}, want_randoms{rows, config.num_random(), 2};
  MFUSER_CHECK(b.shape(candidates) == want_candidates && b.shape(randoms) == want_randoms, fn, " '", name,
               "': candidates ", b.shape(candidates).str(), " and randoms ", b.shape(randoms).str(), " must be ",
               want_candidates.str(), " and ", want_randoms.str());

  Graph& g = b.graph();
  const auto outs = g.add("mask_loss", name, {cls_scores, mask_preds, gt_seg, candidates, randoms},
                          {{Shape{3}, DType::f32}, {Shape{rows, config.num_points, 2}, DType::f32}},
                          [config](Ins in, Outs o) {
                            kernels::mask_loss(in[0], in[1], in[2], in[3], in[4], config, o[0], o[1]);
                          });
  // The losses under the node's name (the node's outputs are `name.0`, `name.1`).
  const ValueId losses = g.reshape(outs[0], Shape{3}, name);
  if (Tape* tape = b.tape())
    tape->record({cls_scores, mask_preds}, {losses},
                 grad::mask_losses(cls_scores, mask_preds, gt_seg, outs[1], losses, config));
  return losses;
}

ValueId seg_cross_entropy(Builder& b, ValueId logits, ValueId gt_seg, float loss_weight, const std::string& name) {
  constexpr const char* fn = "seg_cross_entropy";
  check_value(b, fn, name, "logits", logits, DType::f32, 4);
  check_value(b, fn, name, "gt_seg", gt_seg, DType::i64, 3);
  const Shape xs = b.shape(logits), ls = b.shape(gt_seg);
  MFUSER_CHECK(xs[0] == ls[0], fn, " '", name, "': logits ", xs.str(), " and gt_seg ", ls.str(),
               " differ in the batch size");
  const bool at_label_size = xs[2] == ls[1] && xs[3] == ls[2];
  const ValueId x = at_label_size ? logits : b.resize_bilinear(logits, ls[1], ls[2], name + ".resize");
  const ValueId loss = b.graph().add1("cross_entropy", name, {x, gt_seg}, {Shape{1}, DType::f32},
                                      [loss_weight](Ins in, Outs o) {
                                        Tensor scalar = o[0].reshape(Shape{});
                                        kernels::cross_entropy(in[0], in[1], Tensor(), kIgnoreIndex,
                                                               kernels::CrossEntropyReduction::mean_all, scalar);
                                        if (loss_weight != 1.f) kernels::scale(o[0], o[0], loss_weight);
                                      });
  if (Tape* tape = b.tape()) tape->record({x}, {loss}, grad::seg_cross_entropy(x, gt_seg, loss, loss_weight));
  return loss;
}

namespace grad {

// One mask_loss_backward node computing the wanted ones of grad_cls_scores and grad_mask_preds. It reads gt_seg
// and the upstream [3] always, cls_scores only for its gradient, mask_preds and the saved points only for theirs.
BackwardRule mask_losses(ValueId cls_scores, ValueId mask_preds, ValueId gt_seg, ValueId points, ValueId losses,
                         const MaskLossConfig& config) {
  return [=](GradContext& c) {
    const ValueId grad_losses = c.grad(losses);
    const bool want_cls = c.wants(cls_scores), want_mask = c.wants(mask_preds);
    if (grad_losses == kNoValue || !(want_cls || want_mask)) return;
    Builder& b = c.builder();
    std::vector<ValueId> inputs = {gt_seg, grad_losses};
    if (want_cls) inputs.push_back(cls_scores);
    if (want_mask) inputs.insert(inputs.end(), {mask_preds, points});
    std::vector<graph::OutputSpec> outs;
    if (want_cls) outs.push_back(b.spec(cls_scores));
    if (want_mask) outs.push_back(b.spec(mask_preds));
    const auto grads = b.graph().add("mask_loss_backward", c.name(losses), inputs, outs, [=](Ins in, Outs o) {
      const Tensor none_in;
      Tensor none_cls, none_mask;
      size_t i = 2, k = 0;
      const Tensor& cls = want_cls ? in[i++] : none_in;
      const Tensor& mask = want_mask ? in[i++] : none_in;
      const Tensor& pts = want_mask ? in[i++] : none_in;
      Tensor& grad_cls = want_cls ? o[k++] : none_cls;
      Tensor& grad_mask = want_mask ? o[k++] : none_mask;
      kernels::mask_loss_backward(cls, mask, in[0], pts, config, in[1], grad_cls, grad_mask);
    });
    size_t k = 0;
    if (want_cls) c.accumulate(cls_scores, grads[k++]);
    if (want_mask) c.accumulate(mask_preds, grads[k++]);
  };
}

// grad_logits = loss_weight * cross_entropy_backward(upstream); reads the logits (the softmax is recomputed) and
// gt_seg.
BackwardRule seg_cross_entropy(ValueId logits, ValueId gt_seg, ValueId loss, float loss_weight) {
  return [=](GradContext& c) {
    Builder& b = c.builder();
    const ValueId g = c.grad(loss);
    if (g == kNoValue) return;
    c.accumulate(logits, b.graph().add1("cross_entropy_backward", c.name(loss), {logits, gt_seg, g},
                                        b.spec(logits), [loss_weight](Ins in, Outs o) {
                                          kernels::cross_entropy_backward(
                                              in[0], in[1], Tensor(), kIgnoreIndex,
                                              kernels::CrossEntropyReduction::mean_all, in[2].reshape(Shape{}), o[0]);
                                          if (loss_weight != 1.f) kernels::scale(o[0], o[0], loss_weight);
                                        }));
  };
}

}  // namespace grad

}  // namespace mfuser::model
