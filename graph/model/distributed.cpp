#include "graph/model/distributed.h"

namespace mfuser::model {

GradientBuckets::GradientBuckets(Builder& b, Communicator& comm, GradientReduction reduction, size_t bucket_bytes)
    : b_(b), comm_(comm), reduction_(reduction), bucket_bytes_(bucket_bytes) {}

void GradientBuckets::add(ValueId param, ValueId grad) {
  const graph::Value& g = b_.graph().value(grad);
  MFUSER_CHECK(g.dtype == DType::f32, "ddp: the gradient of '", b_.graph().value(param).name, "' is ",
               dtype_name(g.dtype), ", expected f32");
  pending_.emplace_back(param, b_.reshape(grad, {g.shape.numel()}));
  pending_bytes_ += g.nbytes();
  if (pending_bytes_ >= bucket_bytes_) reduce_pending();
}

void GradientBuckets::reduce_pending() {
  if (pending_.empty()) return;
  Graph& g = b_.graph();
  const std::string name = str_cat("ddp.bucket.", layout_.size());
  GradientBucket bucket;
  std::vector<ValueId> flats;
  for (const auto& [param, flat] : pending_) {
    const int64_t n = g.value(flat).shape.numel();
    bucket.slots.push_back({g.value(param).name, bucket.padded, n});
    bucket.padded += n;
    flats.push_back(flat);
  }
  const bool scatter = reduction_ == GradientReduction::reduce_scatter;
  const int64_t ranks = comm_.world_size(), pad = scatter ? (ranks - bucket.padded % ranks) % ranks : 0;
  if (pad > 0) {  // zeros, so that the bucket cuts into equal shards
    flats.push_back(g.constant(name + ".pad", Tensor::zeros({pad}, DType::f32)));
    bucket.padded += pad;
  }
  const ValueId packed = flats.size() == 1 ? flats[0] : b_.concat(flats, 0, name);
  ValueId reduced;
  if (scatter) {
    reduced = b_.reduce_scatter(comm_, packed, ReduceOp::mean, CollectiveOrder::overlapped, name + ".reduce_scatter");
    bucket.shard = "grad_shard." + std::to_string(layout_.size());
    g.mark_output(g.reshape(reduced, g.value(reduced).shape, bucket.shard));
  } else {
    reduced = b_.all_reduce(comm_, packed, ReduceOp::mean, CollectiveOrder::overlapped, name + ".all_reduce");
    for (const GradientBucket::Slot& s : bucket.slots) {
      const graph::Value& p = g.value(g.at(s.param));
      g.mark_output(g.reshape(g.slice_rows(reduced, s.offset, s.offset + s.numel), p.shape, "grad." + s.param));
    }
  }
  in_flight_.push_back(packed);
  in_flight_.push_back(reduced);
  layout_.push_back(std::move(bucket));
  pending_.clear();
  pending_bytes_ = 0;
}

void GradientBuckets::finish() {
  reduce_pending();
  if (in_flight_.empty()) return;
  Communicator& comm = comm_;
  b_.node("ddp_join", "ddp.join", in_flight_, {1},
          [&comm](std::span<const Tensor>, std::span<Tensor>) { comm.join(); }, DType::f32);
}

}  // namespace mfuser::model
