// ZeRO-1 for the trainer: AdamW with its state sharded over the ranks of a data-parallel group.
//
// The training graph reduce-scatters each gradient bucket (graph/model/distributed.h): rank r holds the mean
// gradient of shard r of every bucket only. ShardedAdamW keeps exp_avg / exp_avg_sq for exactly those elements
// (1/W of the state), updates the parameter elements of its shards in place (AdamW is element-wise, so the
// arithmetic is that of the replicated optimizer, bit for bit), and all-gathers the updated elements so every
// rank holds every parameter again. A shard may cut through a parameter: each parameter's part in a shard is
// a "piece", updated with that parameter's own learning rate and weight decay.
//
// Checkpoints hold the full state in the replicated format ("optimizer.exp_avg.<name>", ...), gathered from
// every rank, so a run can resume with another world size or without ZeRO.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "graph/executor.h"
#include "graph/model/distributed.h"
#include "kernels/adamw/adamw.h"
#include "loaders/safetensors.h"
#include "runtime/communicator.h"

namespace mfuser::apps {

class ShardedAdamW {
 public:
  // `buckets`: the training graph's layout; only parameters for which `updated(name)` holds get state and
  // updates (the others keep their values).
  ShardedAdamW(const std::vector<model::GradientBucket>& buckets, const std::function<bool(const std::string&)>& updated,
               Communicator& comm, Device device);

  // The sum of squares of this rank's gradient elements (all ranks' sums add up to the whole gradient's), and
  // the first parameter with a non-finite piece here (empty if none).
  std::pair<double, std::string> local_sum_of_squares(const graph::Executor& ex) const;
  // AdamW on this rank's elements with `params(name)`, then the all-gather of every updated element.
  void step(graph::Executor& ex, const std::function<kernels::AdamWParams(const std::string&)>& params);
  // Every rank must call these two together: the full state, gathered, in the replicated checkpoint format.
  std::vector<std::pair<std::string, Tensor>> gather_state(const graph::Executor& ex);
  void load_state(const SafetensorsReader& reader, const std::string& path, const graph::Executor& ex);

 private:
  // One parameter's elements [param_begin, param_begin + count) of bucket `bucket`, at shard offset
  // shard_begin of rank `rank`'s shard.
  struct Piece {
    std::string param;
    size_t bucket;
    int rank;
    int64_t param_begin, shard_begin, count;
  };
  Tensor param_view(const graph::Executor& ex, const Piece& p) const;
  Tensor grad_view(const graph::Executor& ex, const Piece& p) const;

  const std::vector<model::GradientBucket> buckets_;
  Communicator& comm_;
  Device device_;
  std::vector<Piece> pieces_;                      // every rank's, bucket by bucket
  std::vector<Tensor> exp_avg_, exp_avg_sq_;       // per bucket, this rank's shard
};

}  // namespace mfuser::apps
