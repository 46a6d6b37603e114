// Data-parallel training in the graph: every rank of a Communicator group builds the same training graph on
// its own slice of the global batch (graph/model/training.h), and two things tie the ranks together:
//
//   SyncBN      training-mode BatchNorm with statistics over every rank's batch (Builder::batchnorm when the
//               Builder has a communicator; kernels/batchnorm/batchnorm.h).
//   Gradients   GradientBuckets: build_backward reports each trainable parameter's gradient as soon as it is
//               complete (BackwardOptions::on_complete); the gradients are packed into buckets of about
//               `bucket_bytes` in that order, and each full bucket is reduced over the ranks by a collective
//               node right there in the backward, CollectiveOrder::overlapped: with NCCL it runs on its own
//               stream while the backward computes the next gradients (PyTorch DDP's bucketing). A last node,
//               "ddp.join", makes the device wait for every bucket and keeps their inputs alive until then.
//               Two ways to reduce a bucket:
//     all_reduce      (DDP) the mean over ranks, published as "grad.<name>" (views of the reduced buckets), so
//                     the optimizer reads them as it reads a single rank's.
//     reduce_scatter  (ZeRO-1) the bucket, zero-padded to a multiple of the world size W, is cut into W equal
//                     shards; rank r gets the mean of shard r only, as "grad_shard.<k>", updates the parameter
//                     elements of that shard with its shard of the optimizer state, and all-gathers the updated
//                     elements (apps/trainer.cpp). The layout (which parameter lies where) is `buckets()`.
//
// Memory: each bucket's packed input and its reduced output (all_reduce: 2x the gradients; reduce_scatter:
// 1 + 1/W x); the local gradients are freed once packed.
#pragma once

#include <string>
#include <vector>

#include "graph/model/builder.h"

namespace mfuser::model {

enum class GradientReduction : uint8_t { all_reduce, reduce_scatter };

// Where the gradients of one bucket lie: parameters back to back in completion order, `padded` elements in
// all (a multiple of the world size for reduce_scatter), rank r's shard [r * padded / W, (r + 1) * padded / W).
struct GradientBucket {
  struct Slot {
    std::string param;
    int64_t offset = 0, numel = 0;
  };
  std::string shard;  // reduce_scatter: the graph output holding this rank's reduced shard
  int64_t padded = 0;
  std::vector<Slot> slots;
};

class GradientBuckets {
 public:
  // PyTorch DDP's default bucket size, 25 MiB.
  static constexpr size_t kDefaultBucketBytes = size_t(25) << 20;

  GradientBuckets(Builder& b, Communicator& comm, GradientReduction reduction,
                  size_t bucket_bytes = kDefaultBucketBytes);

  // `grad` (f32, `param`'s shape) is `param`'s complete gradient on this rank.
  void add(ValueId param, ValueId grad);
  // Reduces the last, partial bucket and appends the join node. Call once, after build_backward.
  void finish();

  const std::vector<GradientBucket>& buckets() const { return layout_; }

 private:
  void reduce_pending();

  Builder& b_;
  Communicator& comm_;
  GradientReduction reduction_;
  size_t bucket_bytes_;
  std::vector<std::pair<ValueId, ValueId>> pending_;  // (param, flat gradient) of the open bucket
  size_t pending_bytes_ = 0;
  std::vector<ValueId> in_flight_;  // every bucket's input and output, read by the join node
  std::vector<GradientBucket> layout_;
};

}  // namespace mfuser::model
