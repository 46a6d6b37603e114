// Data-parallel training in the graph: every rank of a Communicator group builds the same training graph on
// its own slice of the global batch (graph/model/training.h), and two things tie the ranks together:
//
//   SyncBN      training-mode BatchNorm with statistics over every rank's batch (Builder::batchnorm when the
//               Builder has a communicator of world size > 1; kernels/batchnorm/batchnorm.h).
//   Gradients   GradientBuckets: build_backward reports each trainable parameter's gradient as soon as it is
//               complete (BackwardOptions::on_complete); the gradients are packed into buckets of about
//               `bucket_bytes` in that order, and each full bucket is averaged over the ranks by an all_reduce
//               node right there in the backward, CollectiveOrder::overlapped: with NCCL it runs on its own
//               stream while the backward computes the next gradients (PyTorch DDP's bucketing). A last node,
//               "ddp.join", makes the device wait for every bucket and keeps their inputs alive until then.
//               The averaged gradients are published as "grad.<name>" (views of the reduced buckets), so the
//               optimizer reads them as it reads a single rank's.
//
// Memory: each bucket's packed input and its reduced output (2x the gradients, f32); the local gradients are
// freed once packed.
#pragma once

#include <string>
#include <vector>

#include "graph/model/builder.h"

namespace mfuser::model {

class GradientBuckets {
 public:
  // PyTorch DDP's default bucket size, 25 MiB.
  static constexpr size_t kDefaultBucketBytes = size_t(25) << 20;

  GradientBuckets(Builder& b, Communicator& comm, size_t bucket_bytes = kDefaultBucketBytes);

  // `grad` (f32, `param`'s shape) is `param`'s complete gradient on this rank.
  void add(ValueId param, ValueId grad);
  // Reduces the last, partial bucket and appends the join node. Call once, after build_backward.
  void finish();

  int buckets() const { return buckets_; }

 private:
  void reduce_pending();

  Builder& b_;
  Communicator& comm_;
  size_t bucket_bytes_;
  std::vector<std::pair<ValueId, ValueId>> pending_;  // (param, flat gradient) of the open bucket
  size_t pending_bytes_ = 0;
  std::vector<ValueId> in_flight_;  // every bucket's input and output, read by the join node
  int buckets_ = 0;
};

}  // namespace mfuser::model
