#include "graph/model/distributed.h"

namespace mfuser::model {

GradientBuckets::GradientBuckets(Builder& b, Communicator& comm, size_t bucket_bytes)
    : b_(b), comm_(comm), bucket_bytes_(bucket_bytes) {}

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
  const std::string name = str_cat("ddp.bucket.", buckets_++);
  std::vector<ValueId> flats;
  for (const auto& [param, flat] : pending_) flats.push_back(flat);
  const ValueId packed = flats.size() == 1 ? flats[0] : b_.concat(flats, 0, name);
  const ValueId reduced = b_.all_reduce(comm_, packed, ReduceOp::mean, CollectiveOrder::overlapped,
                                        name + ".all_reduce");
  int64_t offset = 0;
  for (const auto& [param, flat] : pending_) {
    const int64_t n = g.value(flat).shape.numel();
    const graph::Value& p = g.value(param);
    const ValueId published = g.reshape(g.slice_rows(reduced, offset, offset + n), p.shape, "grad." + p.name);
    g.mark_output(published);
    offset += n;
  }
  in_flight_.push_back(packed);
  in_flight_.push_back(reduced);
  pending_.clear();
  pending_bytes_ = 0;
}

void GradientBuckets::finish() {
  reduce_pending();
  if (in_flight_.empty()) return;
  Communicator& comm = comm_;
  b_.node("ddp_join", "ddp.join", in_flight_, {1}, [&comm](std::span<const Tensor>, std::span<Tensor>) { comm.join(); }, DType::f32);
}

}  // namespace mfuser::model
