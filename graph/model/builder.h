// Builder: appends operator nodes to a Graph, one call per operator, with shapes inferred at build time and
// weights fetched by their official state-dict names. Model code (backbone.cpp, head.cpp, ...) reads like
// the PyTorch module it mirrors:
//
//   ValueId h = b.layernorm(x, "backbone.transformer.resblocks.0.ln_1", 1e-5f);
//   h = b.linear(h, "backbone.transformer.resblocks.0.mlp.c_fc");
//
// Every node is named after the module it computes (its output value carries the same name), which is
// what errors, NVTX ranges, --dump and the parity tests use. Kernels are called through their device
// dispatchers, so the graph runs unchanged on CPU and CUDA.
//
// Storage type: a Builder made with DType::bf16 stores weights, float constants and every float activation
// in bf16 (the CUDA kernels compute in f32 and round on store; the CPU executor widens each node to f32 and
// rounds its outputs the same way); DType::f32, the default, is what the CPU reference runs natively. Integer
// and boolean values keep their own dtypes. An op's output takes its first float input's dtype, so what follows
// an explicit cast to f32 (a training graph's losses) stays f32.
#pragma once

#include <array>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "graph/graph.h"
#include "graph/model/backward.h"
#include "graph/model/weights.h"
#include "kernels/activation/activation.h"
#include "runtime/communicator.h"

namespace mfuser::model {

using graph::Graph;
using graph::kNoValue;
using graph::ValueId;

class Builder {
 public:
  Builder(Graph& graph, WeightStore& weights, DType storage = DType::f32);

  Graph& graph() { return g_; }
  WeightStore& weights() { return w_; }
  DType storage() const { return storage_; }

  // Training: with a tape, every op also records its backward rule (backward.h); `training` switches the
  // ops whose forward differs in training (BatchNorm: batch statistics).
  void set_tape(Tape* tape) { tape_ = tape; }
  Tape* tape() const { return tape_; }
  void set_training(bool training) { training_ = training; }
  bool training() const { return training_; }
  // Training-mode dropout and DropPath (Builder::dropout); on by default, off for parity with a reference that
  // cannot share our random stream.
  void set_dropout(bool enabled) { dropout_ = enabled; }
  // Data-parallel training: with a communicator, training-mode BatchNorm is SyncBN (batch statistics over every
  // rank's batch, graph/model/distributed.h). Not owned; must outlive the graph's runs.
  void set_communicator(Communicator* comm) { comm_ = comm; }
  Communicator* communicator() const { return comm_; }
  // Activation checkpointing (backward.h): the ops appended between the two calls form one segment, whose
  // activations a recomputing backward recomputes instead of keeping. No-ops without a tape. Segments do not
  // nest; end_checkpoint refuses a segment holding a node with side effects (training-mode BatchNorm).
  void begin_checkpoint(const std::string& name);
  void end_checkpoint();
  Shape shape(ValueId v) const { return g_.value(v).shape; }  // a copy: adding values may move the originals
  DType dtype(ValueId v) const { return g_.value(v).dtype; }
  graph::OutputSpec spec(ValueId v) const { return {shape(v), dtype(v)}; }  // a value like v (e.g. its gradient)

  // A weight by its state-dict name, loaded once (a second request returns the same value), in the storage
  // type.
  ValueId param(const std::string& name, const Shape& shape);
  // A build-time constant; float data is converted to the storage type.
  ValueId constant(const std::string& name, const Tensor& data);
  // Dim `dim` of a stored weight (sizes that only the checkpoint knows, e.g. FFN widths); `fallback` when the
  // weights are synthesized.
  int64_t stored_dim(const std::string& name, int dim, int64_t fallback);

  // ---- dense layers ----
  // nn.Linear: x [..., in] -> [..., out] with prefix.weight [out, in] and prefix.bias [out] (if has_bias).
  // `name` names the node when the same weights run more than once (default: the prefix).
  ValueId linear(ValueId x, const std::string& prefix, int64_t out_features, bool has_bias = true,
                 const std::string& name = {});
  // The same with explicit weight/bias values (bias may be kNoValue), e.g. for fused qkv slices.
  ValueId linear(ValueId x, ValueId weight, ValueId bias, const std::string& name);
  // x [.., M, K] @ y [.., K, N] (or y^T when transpose_b, y [.., N, K]), batched over equal leading dims.
  ValueId matmul(ValueId x, ValueId y, bool transpose_b, const std::string& name, float alpha = 1.f);

  // ---- normalization ----
  ValueId layernorm(ValueId x, const std::string& prefix, float eps, const std::string& name = {});
  ValueId groupnorm(ValueId x, const std::string& prefix, int num_groups, float eps = 1e-5f);
  ValueId batchnorm(ValueId x, const std::string& prefix, float eps = 1e-5f);
  ValueId rmsnorm_gated(ValueId x, ValueId z, const std::string& prefix, float eps = 1e-5f);
  ValueId l2norm(ValueId x, int dim, const std::string& name);

  // ---- elementwise ----
  ValueId activation(ValueId x, kernels::Activation kind, const std::string& name);
  ValueId add(ValueId a, ValueId b, const std::string& name);  // b broadcasts onto a
  ValueId mul(ValueId a, ValueId b, const std::string& name);
  ValueId scale(ValueId x, float factor, const std::string& name, float bias = 0.f);
  ValueId softmax(ValueId x, ValueId mask, const std::string& name);  // mask may be kNoValue
  // Training-mode nn.Dropout / DropPath (kernels/dropout/dropout.h): one draw per element, or per unit of
  // `inner` consecutive elements, unit (i / inner) % units. The identity outside training, at p = 0 or with
  // dropout off. The step's seed is the graph input kDropoutSeed (i64 [1]), made by the first dropout.
  ValueId dropout(ValueId x, float p, const std::string& name, int64_t inner = 1, int64_t units = 0);
  static constexpr const char* kDropoutSeed = "dropout.seed";
  ValueId dropout_seed() const { return dropout_seed_; }  // kNoValue while the graph has no dropout
  // x converted to another float dtype (e.g. bf16 logits into an f32 loss, as autocast does); its gradient
  // is converted back.
  ValueId cast(ValueId x, DType to, const std::string& name);

  // ---- attention ----
  // q [B, H, Lq, D], k/v [B, H, Lk, D]; masks may be kNoValue.
  ValueId attention(ValueId q, ValueId k, ValueId v, const std::string& name, bool causal = false,
                    ValueId bool_mask = kNoValue, ValueId float_mask = kNoValue);

  // ---- convolution and resampling (NCHW) ----
  ValueId conv2d(ValueId x, const std::string& prefix, int64_t out_channels, int kernel, int stride, int padding,
                 bool has_bias);
  ValueId conv_transpose2d(ValueId x, const std::string& prefix, int64_t out_channels, bool has_bias = true);
  ValueId maxpool2d(ValueId x, const std::string& name);
  ValueId resize_bilinear(ValueId x, int64_t height, int64_t width, const std::string& name);

  // ---- sequence models ----
  // Depthwise 'same' conv over tokens: x [B, L, C], weight prefix.weight [C, 1, k] (bias if has_bias).
  ValueId dwconv1d(ValueId x, const std::string& prefix, int kernel, bool has_bias);
  // Mamba selective scan (kernels/selective_scan): u, delta [B, D, L]; A [D, N]; Bm, Cm [B, N, L]; D [D];
  // delta_bias [D]; softplus on delta. D / delta_bias may be kNoValue.
  ValueId selective_scan(ValueId u, ValueId delta, ValueId A, ValueId Bm, ValueId Cm, ValueId D, ValueId delta_bias,
                         const std::string& name);
  // Multi-scale deformable attention sampling (kernels/msdeform_attn): value [B, S, H, Dh], locations
  // [B, Q, H, L, P, 2], weights [B, Q, H, L, P] -> [B, Q, H*Dh]; level shapes are fixed at build time.
  ValueId msdeform_attn(ValueId value, const std::vector<std::array<int64_t, 2>>& level_shapes, ValueId locations,
                        ValueId weights, const std::string& name);
  // The sine positional encoding [B, 2F, H, W] as a build-time constant (it depends on no input).
  ValueId posenc(int64_t batch, int64_t num_feats, int64_t height, int64_t width, const std::string& name);

  // ---- layout ----
  // Zero-cost views (graph.h): another shape of the same bytes, rows [begin, end) of dim 0.
  ValueId reshape(ValueId x, const Shape& shape, const std::string& name = {});
  ValueId slice_rows(ValueId x, int64_t begin, int64_t end, const std::string& name = {});
  ValueId permute(ValueId x, std::vector<int> perm, const std::string& name);
  ValueId concat(const std::vector<ValueId>& xs, int dim, const std::string& name);
  std::vector<ValueId> split(ValueId x, const std::vector<int64_t>& sizes, int dim, const std::string& name);
  ValueId embedding(ValueId ids, ValueId table, const std::string& name);

  // ---- collectives (over the ranks of a Communicator; no backward rule: used by rules and by the trainer's
  // gradient buckets, see graph/model/distributed.h) ----
  // f32 x -> the sum / mean over ranks, same shape.
  ValueId all_reduce(Communicator& comm, ValueId x, ReduceOp op, CollectiveOrder order, const std::string& name);
  // x -> [W, *x.shape]: every rank's x, rank 0 first.
  ValueId all_gather(Communicator& comm, ValueId x, const std::string& name);
  // f32 x [W * n] -> [n]: this rank's block of the sum / mean over ranks.
  ValueId reduce_scatter(Communicator& comm, ValueId x, ReduceOp op, CollectiveOrder order, const std::string& name);

  // Appends a node running `run`, for ops with no helper above. The output is in the storage type unless
  // `dtype` says otherwise. Such a node has no backward rule: a backward through it fails, naming it.
  ValueId node(const std::string& op, const std::string& name, std::vector<ValueId> inputs, const Shape& out,
               graph::Kernel run, std::optional<DType> dtype = std::nullopt);

 private:
  ValueId add_node(const std::string& op, const std::string& name, std::vector<ValueId> inputs, const Shape& out,
                   graph::Kernel run, std::optional<DType> dtype = std::nullopt);
  void record(std::vector<ValueId> inputs, std::vector<ValueId> outputs, BackwardRule rule);

  Graph& g_;
  WeightStore& w_;
  DType storage_;
  Tape* tape_ = nullptr;
  bool training_ = false;
  bool dropout_ = true;
  ValueId dropout_seed_ = kNoValue;
  Communicator* comm_ = nullptr;
  std::optional<CheckpointSegment> open_segment_;
  std::vector<int> stateful_nodes_;  // nodes whose effect goes beyond their outputs: never recomputed
};

}  // namespace mfuser::model
