#include "graph/model/builder.h"

#include <numeric>

#include "graph/model/grad_rules.h"
#include "kernels/attention/attention.h"
#include "kernels/batchnorm/batchnorm.h"
#include "kernels/cast/cast.h"
#include "kernels/conv2d/conv2d.h"
#include "kernels/conv_transpose2d/conv_transpose2d.h"
#include "kernels/dropout/dropout.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/embedding/embedding.h"
#include "kernels/gemm/gemm.h"
#include "kernels/groupnorm/groupnorm.h"
#include "kernels/l2norm/l2norm.h"
#include "kernels/layernorm/layernorm.h"
#include "kernels/layout/layout.h"
#include "kernels/dwconv1d/dwconv1d.h"
#include "kernels/maxpool2d/maxpool2d.h"
#include "kernels/msdeform_attn/msdeform_attn.h"
#include "kernels/posenc/posenc.h"
#include "kernels/selective_scan/selective_scan.h"
#include "kernels/resize/resize.h"
#include "kernels/rmsnorm_gated/rmsnorm_gated.h"
#include "kernels/softmax/softmax.h"

namespace mfuser::model {

namespace {

using Ins = std::span<const Tensor>;
using Outs = std::span<Tensor>;

// The i-th input, or an undefined tensor when that optional input was not given.
const Tensor& optional_input(Ins in, bool present, size_t index) {
  static const Tensor kNone;
  return present ? in[index] : kNone;
}

}  // namespace

Builder::Builder(Graph& graph, WeightStore& weights, DType storage) : g_(graph), w_(weights), storage_(storage) {
  MFUSER_CHECK(storage == DType::f32 || storage == DType::bf16, "builder: storage type must be f32 or bf16, got ",
               dtype_name(storage));
}

namespace {
Tensor in_storage(const Tensor& data, DType storage) {
  return is_floating(data.dtype()) && data.dtype() != storage ? kernels::cast_to(data, storage) : data;
}
}  // namespace

ValueId Builder::constant(const std::string& name, const Tensor& data) {
  return g_.constant(name, in_storage(data, storage_));
}

ValueId Builder::param(const std::string& name, const Shape& shape) {
  if (const ValueId existing = g_.find(name); existing != kNoValue) {
    MFUSER_CHECK(g_.value(existing).shape == shape, "weight '", name, "' requested as ", shape.str(), " and as ",
                 g_.value(existing).shape.str());
    return existing;
  }
  return g_.weight(name, in_storage(w_.get(name, shape), storage_));
}

int64_t Builder::stored_dim(const std::string& name, int dim, int64_t fallback) {
  if (w_.synthesizing()) return fallback;
  const auto shape = w_.shape_of(name);
  MFUSER_CHECK(shape && !shape->empty(), w_.path(), ": cannot read the size of '", name, "'");
  const int d = dim < 0 ? int(shape->size()) + dim : dim;
  MFUSER_CHECK(d >= 0 && size_t(d) < shape->size(), w_.path(), ": '", name, "' has no dim ", dim);
  return (*shape)[size_t(d)];
}

ValueId Builder::add_node(const std::string& op, const std::string& name, std::vector<ValueId> inputs,
                          const Shape& out, graph::Kernel run, std::optional<DType> dtype) {
  // By default the output has the first float input's dtype (the storage type everywhere but in the f32 loss
  // tail of a bf16 training graph), or the storage type when no input is a float.
  if (!dtype)
    for (ValueId v : inputs)
      if (v != kNoValue && is_floating(g_.value(v).dtype)) {
        dtype = g_.value(v).dtype;
        break;
      }
  return g_.add1(op, name, std::move(inputs), {out, dtype.value_or(storage_)}, std::move(run));
}

ValueId Builder::all_reduce(Communicator& comm, ValueId x, ReduceOp op, CollectiveOrder order,
                            const std::string& name) {
  MFUSER_CHECK(g_.value(x).dtype == DType::f32, "all_reduce '", name, "': needs an f32 value, got ",
               dtype_name(g_.value(x).dtype));
  return add_node("all_reduce", name, {x}, shape(x),
                  [&comm, op, order](Ins in, Outs o) { comm.all_reduce(in[0], o[0], op, order); }, DType::f32);
}

ValueId Builder::reduce_scatter(Communicator& comm, ValueId x, ReduceOp op, CollectiveOrder order,
                                const std::string& name) {
  const int64_t n = shape(x).numel(), ranks = comm.world_size();
  MFUSER_CHECK(g_.value(x).dtype == DType::f32 && shape(x).ndim() == 1 && n % ranks == 0, "reduce_scatter '", name,
               "': needs an f32 vector whose size is a multiple of ", ranks, ", got ", shape(x).str());
  return add_node("reduce_scatter", name, {x}, {n / ranks},
                  [&comm, op, order](Ins in, Outs o) { comm.reduce_scatter(in[0], o[0], op, order); }, DType::f32);
}

ValueId Builder::all_gather(Communicator& comm, ValueId x, const std::string& name) {
  const Shape xs = shape(x);
  std::vector<int64_t> dims{comm.world_size()};
  dims.insert(dims.end(), xs.dims().begin(), xs.dims().end());
  return add_node("all_gather", name, {x}, Shape(std::span<const int64_t>(dims)),
                  [&comm](Ins in, Outs o) { comm.all_gather(in[0], o[0]); }, g_.value(x).dtype);
}

ValueId Builder::node(const std::string& op, const std::string& name, std::vector<ValueId> inputs, const Shape& out,
                      graph::Kernel run, std::optional<DType> dtype) {
  const std::vector<ValueId> ins = inputs;
  const ValueId y = add_node(op, name, std::move(inputs), out, std::move(run), dtype);
  record(ins, {y}, grad::unsupported(y, op));
  return y;
}

void Builder::record(std::vector<ValueId> inputs, std::vector<ValueId> outputs, BackwardRule rule) {
  if (tape_) tape_->record(std::move(inputs), std::move(outputs), std::move(rule));
}

void Builder::begin_checkpoint(const std::string& name) {
  if (!tape_) return;
  MFUSER_CHECK(!open_segment_, "checkpoint segment '", name, "' begins inside segment '", open_segment_->name,
               "' (segments do not nest)");
  open_segment_ = CheckpointSegment{.name = name,
                                    .first_entry = tape_->entries().size(),
                                    .first_node = int(g_.nodes().size()),
                                    .first_value = ValueId(g_.values().size())};
}

void Builder::end_checkpoint() {
  if (!tape_) return;
  MFUSER_CHECK(open_segment_, "end_checkpoint without begin_checkpoint");
  CheckpointSegment segment = std::move(*open_segment_);
  open_segment_.reset();
  segment.end_entry = tape_->entries().size();
  segment.end_node = int(g_.nodes().size());
  segment.end_value = ValueId(g_.values().size());
  for (const int n : stateful_nodes_) {
    const graph::Node& node = g_.nodes()[size_t(n)];
    MFUSER_CHECK(n < segment.first_node || n >= segment.end_node, "checkpoint segment '", segment.name,
                 "' holds node '", node.name, "' (", node.op,
                 "), whose effect goes beyond its outputs (running statistics): it cannot be recomputed");
  }
  tape_->add_segment(std::move(segment));
}

// ---- dense ----

ValueId Builder::linear(ValueId x, const std::string& prefix, int64_t out_features, bool has_bias,
                        const std::string& name) {
  const int64_t in_features = shape(x)[-1];
  const ValueId w = param(prefix + ".weight", {out_features, in_features});
  const ValueId b = has_bias ? param(prefix + ".bias", {out_features}) : kNoValue;
  return linear(x, w, b, name.empty() ? prefix : name);
}

ValueId Builder::linear(ValueId x, ValueId weight, ValueId bias, const std::string& name) {
  const Shape ws = shape(weight);
  MFUSER_CHECK(ws.ndim() == 2 && ws[1] == shape(x)[-1], "linear '", name, "': input ", shape(x).str(),
               " vs weight ", ws.str());
  Shape out = shape(x);
  out[-1] = ws[0];
  const bool has_bias = bias != kNoValue;
  std::vector<ValueId> inputs = {x, weight};
  if (has_bias) inputs.push_back(bias);
  const ValueId y = add_node("linear", name, inputs, out, [has_bias](Ins in, Outs o) {
    kernels::linear(in[0], in[1], optional_input(in, has_bias, 2), o[0]);
  });
  record(inputs, {y}, grad::linear(x, weight, bias, y));
  return y;
}

ValueId Builder::matmul(ValueId x, ValueId y, bool transpose_b, const std::string& name, float alpha) {
  const Shape xs = shape(x);
  const Shape ys = shape(y);
  MFUSER_CHECK(xs.ndim() >= 2 && xs.ndim() == ys.ndim(), "matmul '", name, "': ", xs.str(), " x ", ys.str());
  for (int d = 0; d < xs.ndim() - 2; ++d)
    MFUSER_CHECK(xs[d] == ys[d], "matmul '", name, "': batch dims differ: ", xs.str(), " x ", ys.str());
  const int64_t m = xs[-2], k = xs[-1];
  const int64_t n = transpose_b ? ys[-2] : ys[-1];
  MFUSER_CHECK((transpose_b ? ys[-1] : ys[-2]) == k, "matmul '", name, "': inner dims differ: ", xs.str(), " x ",
               ys.str(), transpose_b ? " (b transposed)" : "");
  Shape out = xs;
  out[-1] = n;
  kernels::GemmParams p;
  p.m = m;
  p.n = n;
  p.k = k;
  p.trans_b = transpose_b;
  p.alpha = alpha;
  p.batch = xs.numel() / (m * k);
  p.stride_a = m * k;
  p.stride_b = k * n;
  p.stride_c = m * n;
  const ValueId z = add_node("matmul", name, {x, y}, out, [p](Ins in, Outs o) { kernels::gemm(in[0], in[1], o[0], p); });
  record({x, y}, {z}, grad::matmul(x, y, z, p));
  return z;
}

// ---- normalization ----

ValueId Builder::layernorm(ValueId x, const std::string& prefix, float eps, const std::string& name) {
  const int64_t c = shape(x)[-1];
  const ValueId w = param(prefix + ".weight", {c});
  const ValueId b = param(prefix + ".bias", {c});
  const ValueId y = add_node("layernorm", name.empty() ? prefix : name, {x, w, b}, shape(x),
                             [eps](Ins in, Outs o) { kernels::layernorm(in[0], in[1], in[2], o[0], eps); });
  record({x, w, b}, {y}, grad::layernorm(x, w, b, y, eps));
  return y;
}

ValueId Builder::groupnorm(ValueId x, const std::string& prefix, int num_groups, float eps) {
  const int64_t c = shape(x)[1];
  const ValueId w = param(prefix + ".weight", {c});
  const ValueId b = param(prefix + ".bias", {c});
  const ValueId y = add_node("groupnorm", prefix, {x, w, b}, shape(x), [num_groups, eps](Ins in, Outs o) {
    kernels::groupnorm(in[0], in[1], in[2], o[0], num_groups, eps);
  });
  record({x, w, b}, {y}, grad::groupnorm(x, w, b, y, num_groups, eps));
  return y;
}

ValueId Builder::batchnorm(ValueId x, const std::string& prefix, float eps) {
  const int64_t c = shape(x)[1];
  const ValueId mean = param(prefix + ".running_mean", {c});
  const ValueId var = param(prefix + ".running_var", {c});
  const ValueId w = param(prefix + ".weight", {c});
  const ValueId b = param(prefix + ".bias", {c});
  w_.ignore(prefix + ".num_batches_tracked", {}, DType::i64);  // a training counter, unused at inference
  if (!training_)  // running statistics; not trained through, so no backward rule is recorded
    return add_node("batchnorm", prefix, {x, mean, var, w, b}, shape(x),
                    [eps](Ins in, Outs o) { kernels::batchnorm(in[0], in[1], in[2], in[3], in[4], o[0], eps); });
  // Training: batch statistics (F.batch_norm(training=True), momentum 0.1 as PyTorch / mmcv). One node writes
  // out, the batch statistics saved for the backward, and the updated running statistics (f32 [C] copies of
  // the read-only running-stat weights, updated in place by the kernel), marked as graph outputs for the
  // trainer to read back. With a communicator it is SyncBN: the node also reads every rank's moments
  // (kernels/batchnorm/batchnorm.h), gathered by a collective before it.
  constexpr float kMomentum = 0.1f;
  const Shape channels{c};
  const bool synced = comm_ != nullptr;
  std::vector<ValueId> inputs{x, w, b, mean, var};
  if (synced) {
    const ValueId moments = add_node("batchnorm_moments", prefix + ".moments", {x}, {2, c},
                                     [](Ins in, Outs o) { kernels::batchnorm_moments(in[0], o[0]); }, DType::f32);
    inputs.push_back(all_gather(*comm_, moments, prefix + ".moments.gathered"));
  }
  const std::vector<ValueId> outs =
      g_.add(synced ? "batchnorm_train_synced" : "batchnorm_train", prefix, std::move(inputs),
             {{shape(x), storage_}, {channels, DType::f32}, {channels, DType::f32}, {channels, DType::f32},
              {channels, DType::f32}},
             [eps, synced](Ins in, Outs o) {
               kernels::cast(in[3], o[3]);  // running stats -> f32 copies (a plain copy when already f32)
               kernels::cast(in[4], o[4]);
               if (synced)
                 kernels::batchnorm_train_synced(in[0], in[1], in[2], in[5], o[3], o[4], o[0], o[1], o[2], kMomentum,
                                                 eps);
               else
                 kernels::batchnorm_train(in[0], in[1], in[2], o[3], o[4], o[0], o[1], o[2], kMomentum, eps);
             });
  stateful_nodes_.push_back(g_.value(outs[0]).producer);
  // Views naming the outputs (a multi-output node's values are "<prefix>.<k>").
  const ValueId y = g_.reshape(outs[0], shape(x), prefix);  // named as in eval mode
  const ValueId save_mean = g_.reshape(outs[1], channels, prefix + ".save_mean");
  const ValueId save_rstd = g_.reshape(outs[2], channels, prefix + ".save_rstd");
  g_.mark_output(g_.reshape(outs[3], channels, prefix + ".running_mean.updated"));
  g_.mark_output(g_.reshape(outs[4], channels, prefix + ".running_var.updated"));
  record({x, w, b}, {y},
         synced ? grad::sync_batchnorm_train(*comm_, x, w, b, y, save_mean, save_rstd)
                : grad::batchnorm_train(x, w, b, y, save_mean, save_rstd));
  return y;
}

ValueId Builder::rmsnorm_gated(ValueId x, ValueId z, const std::string& prefix, float eps) {
  const ValueId w = param(prefix + ".weight", {shape(x)[-1]});
  const ValueId y = add_node("rmsnorm_gated", prefix, {x, z, w}, shape(x),
                             [eps](Ins in, Outs o) { kernels::rmsnorm_gated(in[0], in[1], in[2], o[0], eps); });
  record({x, z, w}, {y}, grad::rmsnorm_gated(x, z, w, y, eps));
  return y;
}

ValueId Builder::l2norm(ValueId x, int dim, const std::string& name) {
  const ValueId y = add_node("l2norm", name, {x}, shape(x), [dim](Ins in, Outs o) { kernels::l2norm(in[0], o[0], dim); });
  record({x}, {y}, grad::l2norm(x, y, dim));
  return y;
}

// ---- elementwise ----

ValueId Builder::activation(ValueId x, kernels::Activation kind, const std::string& name) {
  const ValueId y =
      add_node("activation", name, {x}, shape(x), [kind](Ins in, Outs o) { kernels::activation(in[0], o[0], kind); });
  record({x}, {y}, grad::activation(x, y, kind));
  return y;
}

ValueId Builder::add(ValueId a, ValueId b, const std::string& name) {
  const ValueId y = add_node("add", name, {a, b}, shape(a), [](Ins in, Outs o) { kernels::add(in[0], in[1], o[0]); });
  record({a, b}, {y}, grad::add(a, b, y));
  return y;
}

ValueId Builder::dropout(ValueId x, float p, const std::string& name, int64_t inner, int64_t units) {
  if (!training_ || !dropout_ || p == 0.f) return x;
  if (dropout_seed_ == kNoValue) dropout_seed_ = g_.input(kDropoutSeed, {1}, DType::i64);
  const kernels::DropoutMask mask{.p = p, .salt = kernels::dropout_salt(name), .inner = inner, .units = units};
  const ValueId y = add_node("dropout", name, {x, dropout_seed_}, shape(x),
                             [mask](Ins in, Outs o) { kernels::dropout(in[0], in[1], o[0], mask); });
  record({x, dropout_seed_}, {y}, grad::dropout(x, dropout_seed_, y, mask));
  return y;
}

ValueId Builder::cast(ValueId x, DType to, const std::string& name) {
  MFUSER_CHECK(is_floating(dtype(x)) && is_floating(to), "cast '", name, "': float dtypes only, got ",
               dtype_name(dtype(x)), " -> ", dtype_name(to));
  const ValueId y = add_node("cast", name, {x}, shape(x), [](Ins in, Outs o) { kernels::cast(in[0], o[0]); }, to);
  record({x}, {y}, grad::cast(x, y));
  return y;
}

ValueId Builder::mul(ValueId a, ValueId b, const std::string& name) {
  const ValueId y = add_node("mul", name, {a, b}, shape(a), [](Ins in, Outs o) { kernels::mul(in[0], in[1], o[0]); });
  record({a, b}, {y}, grad::mul(a, b, y));
  return y;
}

ValueId Builder::scale(ValueId x, float factor, const std::string& name, float bias) {
  const ValueId y = add_node("scale", name, {x}, shape(x),
                             [factor, bias](Ins in, Outs o) { kernels::scale(in[0], o[0], factor, bias); });
  record({x}, {y}, grad::scale(x, y, factor));
  return y;
}

ValueId Builder::softmax(ValueId x, ValueId mask, const std::string& name) {
  const bool has_mask = mask != kNoValue;
  std::vector<ValueId> inputs = {x};
  if (has_mask) inputs.push_back(mask);
  const ValueId y = add_node("softmax", name, inputs, shape(x), [has_mask](Ins in, Outs o) {
    kernels::softmax(in[0], optional_input(in, has_mask, 1), o[0]);
  });
  record({x}, {y}, grad::softmax(x, mask, y));
  return y;
}

// ---- attention ----

ValueId Builder::attention(ValueId q, ValueId k, ValueId v, const std::string& name, bool causal, ValueId bool_mask,
                           ValueId float_mask) {
  const bool has_bool = bool_mask != kNoValue, has_float = float_mask != kNoValue;
  std::vector<ValueId> inputs = {q, k, v};
  if (has_bool) inputs.push_back(bool_mask);
  if (has_float) inputs.push_back(float_mask);
  const ValueId y = add_node("attention", name, inputs, shape(q), [causal, has_bool, has_float](Ins in, Outs o) {
    kernels::attention(in[0], in[1], in[2], o[0], causal, optional_input(in, has_bool, 3),
                       optional_input(in, has_float, has_bool ? 4 : 3));
  });
  record({q, k, v}, {y}, grad::attention(q, k, v, y, causal, bool_mask, float_mask));
  return y;
}

// ---- convolution and resampling ----

ValueId Builder::conv2d(ValueId x, const std::string& prefix, int64_t out_channels, int kernel, int stride, int padding,
                        bool has_bias) {
  const Shape xs = shape(x);
  const ValueId w = param(prefix + ".weight", {out_channels, xs[1], kernel, kernel});
  const ValueId b = has_bias ? param(prefix + ".bias", {out_channels}) : kNoValue;
  const int64_t oh = (xs[2] + 2 * padding - kernel) / stride + 1, ow = (xs[3] + 2 * padding - kernel) / stride + 1;
  std::vector<ValueId> inputs = {x, w};
  if (has_bias) inputs.push_back(b);
  const ValueId y =
      add_node("conv2d", prefix, inputs, {xs[0], out_channels, oh, ow}, [has_bias, stride, padding](Ins in, Outs o) {
        kernels::conv2d(in[0], in[1], optional_input(in, has_bias, 2), o[0], stride, padding);
      });
  record(inputs, {y}, grad::conv2d(x, w, b, y, stride, padding));
  return y;
}

ValueId Builder::conv_transpose2d(ValueId x, const std::string& prefix, int64_t out_channels, bool has_bias) {
  const Shape xs = shape(x);
  const ValueId w = param(prefix + ".weight", {xs[1], out_channels, 2, 2});
  const ValueId b = has_bias ? param(prefix + ".bias", {out_channels}) : kNoValue;
  std::vector<ValueId> inputs = {x, w};
  if (has_bias) inputs.push_back(b);
  const ValueId y = add_node("conv_transpose2d", prefix, inputs, {xs[0], out_channels, 2 * xs[2], 2 * xs[3]},
                             [has_bias](Ins in, Outs o) {
                               kernels::conv_transpose2d(in[0], in[1], optional_input(in, has_bias, 2), o[0]);
                             });
  record(inputs, {y}, grad::conv_transpose2d(x, w, b, y));
  return y;
}

ValueId Builder::maxpool2d(ValueId x, const std::string& name) {
  const Shape xs = shape(x);
  const ValueId y = add_node("maxpool2d", name, {x}, {xs[0], xs[1], xs[2] / 2, xs[3] / 2},
                             [](Ins in, Outs o) { kernels::maxpool2d(in[0], o[0]); });
  record({x}, {y}, grad::maxpool2d(x, y));
  return y;
}

ValueId Builder::resize_bilinear(ValueId x, int64_t height, int64_t width, const std::string& name) {
  const Shape xs = shape(x);
  const ValueId y = add_node("resize_bilinear", name, {x}, {xs[0], xs[1], height, width},
                             [](Ins in, Outs o) { kernels::resize_bilinear(in[0], o[0]); });
  record({x}, {y}, grad::resize_bilinear(x, y));
  return y;
}

// ---- sequence models ----

ValueId Builder::dwconv1d(ValueId x, const std::string& prefix, int kernel, bool has_bias) {
  const int64_t c = shape(x)[-1];
  const ValueId w = param(prefix + ".weight", {c, 1, kernel});
  const ValueId bias = has_bias ? param(prefix + ".bias", {c}) : kNoValue;
  std::vector<ValueId> inputs = {x, w};
  if (has_bias) inputs.push_back(bias);
  const ValueId y = add_node("dwconv1d", prefix, inputs, shape(x), [has_bias](Ins in, Outs o) {
    kernels::dwconv1d(in[0], in[1], optional_input(in, has_bias, 2), o[0]);
  });
  record(inputs, {y}, grad::dwconv1d(x, w, bias, y));
  return y;
}

ValueId Builder::selective_scan(ValueId u, ValueId delta, ValueId A, ValueId Bm, ValueId Cm, ValueId D,
                                ValueId delta_bias, const std::string& name) {
  const bool has_d = D != kNoValue, has_bias = delta_bias != kNoValue;
  std::vector<ValueId> inputs = {u, delta, A, Bm, Cm};
  if (has_d) inputs.push_back(D);
  if (has_bias) inputs.push_back(delta_bias);
  const ValueId y = add_node("selective_scan", name, inputs, shape(u), [has_d, has_bias](Ins in, Outs o) {
    kernels::selective_scan(in[0], in[1], in[2], in[3], in[4], optional_input(in, has_d, 5),
                            optional_input(in, has_bias, has_d ? 6 : 5), o[0], nullptr, /*delta_softplus=*/true);
  });
  record(inputs, {y}, grad::selective_scan(u, delta, A, Bm, Cm, D, delta_bias, y));
  return y;
}

ValueId Builder::msdeform_attn(ValueId value, const std::vector<std::array<int64_t, 2>>& level_shapes,
                               ValueId locations, ValueId weights, const std::string& name) {
  std::vector<int64_t> shapes, starts;
  int64_t start = 0;
  for (const auto& [h, w] : level_shapes) {
    shapes.insert(shapes.end(), {h, w});
    starts.push_back(start);
    start += h * w;
  }
  const auto levels = int64_t(level_shapes.size());
  const ValueId shapes_v = g_.constant(name + ".spatial_shapes", Tensor::from_vector(shapes, {levels, 2}));
  const ValueId starts_v = g_.constant(name + ".level_start_index", Tensor::from_vector(starts, {levels}));
  const Shape vs = shape(value);
  const Shape ls = shape(locations);
  const ValueId y =
      add_node("msdeform_attn", name, {value, shapes_v, starts_v, locations, weights}, {vs[0], ls[1], vs[2] * vs[3]},
               [](Ins in, Outs o) { kernels::msdeform_attn(in[0], in[1], in[2], in[3], in[4], o[0]); });
  record({value, locations, weights}, {y}, grad::msdeform_attn(value, shapes_v, starts_v, locations, weights, y));
  return y;
}

ValueId Builder::posenc(int64_t batch, int64_t num_feats, int64_t height, int64_t width, const std::string& name) {
  Tensor table = Tensor::empty({batch, 2 * num_feats, height, width}, DType::f32);
  kernels::cpu::posenc(table);
  return constant(name, table);
}

// ---- layout ----

ValueId Builder::reshape(ValueId x, const Shape& shape, const std::string& name) {
  const ValueId y = g_.reshape(x, shape, name);
  record({x}, {y}, grad::reshape(x, y));
  return y;
}

ValueId Builder::slice_rows(ValueId x, int64_t begin, int64_t end, const std::string& name) {
  const ValueId y = g_.slice_rows(x, begin, end, name);
  record({x}, {y}, grad::slice_rows(x, y, begin));
  return y;
}

ValueId Builder::permute(ValueId x, std::vector<int> perm, const std::string& name) {
  const Shape xs = shape(x);
  MFUSER_CHECK(int(perm.size()) == xs.ndim(), "permute '", name, "': ", perm.size(), " axes for ", xs.str());
  Shape out = xs;
  for (size_t i = 0; i < perm.size(); ++i) out[int(i)] = xs[perm[i]];
  const ValueId y = add_node("permute", name, {x}, out, [perm](Ins in, Outs o) { kernels::permute(in[0], o[0], perm); });
  record({x}, {y}, grad::permute(x, y, perm));
  return y;
}

ValueId Builder::concat(const std::vector<ValueId>& xs, int dim, const std::string& name) {
  MFUSER_CHECK(!xs.empty(), "concat '", name, "': nothing to concatenate");
  Shape out = shape(xs[0]);
  const int d = dim < 0 ? dim + out.ndim() : dim;
  out[d] = 0;
  for (ValueId x : xs) out[d] += shape(x)[d];
  const ValueId y = add_node("concat", name, xs, out, [d](Ins in, Outs o) { kernels::concat(in, o[0], d); });
  record(xs, {y}, grad::concat(xs, y, d));
  return y;
}

std::vector<ValueId> Builder::split(ValueId x, const std::vector<int64_t>& sizes, int dim, const std::string& name) {
  const Shape xs = shape(x);
  const int d = dim < 0 ? dim + xs.ndim() : dim;
  MFUSER_CHECK(std::accumulate(sizes.begin(), sizes.end(), int64_t(0)) == xs[d], "split '", name, "': sizes do not add up to ",
               xs[d]);
  std::vector<graph::OutputSpec> outs;
  for (int64_t s : sizes) {
    Shape part = xs;
    part[d] = s;
    outs.push_back({part, g_.value(x).dtype});
  }
  std::vector<ValueId> parts = g_.add("split", name, {x}, outs, [d](Ins in, Outs o) { kernels::split(in[0], o, d); });
  record({x}, parts, grad::split(x, parts, d));
  return parts;
}

ValueId Builder::embedding(ValueId ids, ValueId table, const std::string& name) {
  const Shape is = shape(ids);
  std::vector<int64_t> dims(is.dims().begin(), is.dims().end());
  dims.push_back(shape(table)[1]);
  const ValueId y = add_node("embedding", name, {ids, table}, Shape(dims),
                             [](Ins in, Outs o) { kernels::embedding(in[0], in[1], o[0]); });
  record({table}, {y}, grad::embedding(ids, table, y));
  return y;
}

}  // namespace mfuser::model
