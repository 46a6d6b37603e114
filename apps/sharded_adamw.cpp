#include "apps/sharded_adamw.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "kernels/sum_of_squares/sum_of_squares.h"

namespace mfuser::apps {

ShardedAdamW::ShardedAdamW(const std::vector<model::GradientBucket>& buckets,
                           const std::function<bool(const std::string&)>& updated, Communicator& comm, Device device)
    : buckets_(buckets), comm_(comm), device_(device) {
  const int ranks = comm.world_size();
  for (size_t k = 0; k < buckets_.size(); ++k) {
    const model::GradientBucket& b = buckets_[k];
    MFUSER_CHECK(!b.shard.empty() && b.padded % ranks == 0, "zero1: bucket ", k, " is not reduce-scattered over ",
                 ranks, " ranks (build the training graph with zero1)");
    const int64_t shard = b.padded / ranks;
    for (const model::GradientBucket::Slot& s : b.slots) {
      if (!updated(s.param)) continue;
      for (int r = 0; r < ranks; ++r) {
        const int64_t begin = std::max(s.offset, r * shard), end = std::min(s.offset + s.numel, (r + 1) * shard);
        if (begin < end) pieces_.push_back({s.param, k, r, begin - s.offset, begin - r * shard, end - begin});
      }
    }
    exp_avg_.push_back(Tensor::zeros({shard}, DType::f32, device));
    exp_avg_sq_.push_back(Tensor::zeros({shard}, DType::f32, device));
  }
}

Tensor ShardedAdamW::param_view(const graph::Executor& ex, const Piece& p) const {
  const Tensor param = ex.get(p.param);
  return param.reshape({param.numel()}).slice_rows(p.param_begin, p.param_begin + p.count);
}

Tensor ShardedAdamW::grad_view(const graph::Executor& ex, const Piece& p) const {
  return ex.get(buckets_[p.bucket].shard).slice_rows(p.shard_begin, p.shard_begin + p.count);
}

std::pair<double, std::string> ShardedAdamW::local_sum_of_squares(const graph::Executor& ex) const {
  std::vector<Tensor> grads;
  std::vector<const Piece*> mine;
  for (const Piece& p : pieces_)
    if (p.rank == comm_.rank()) {
      grads.push_back(grad_view(ex, p));
      mine.push_back(&p);
    }
  const std::vector<double> squares = kernels::sum_of_squares(grads);
  double sum = 0;
  std::string first_bad;
  for (size_t i = 0; i < squares.size(); ++i) {
    if (!std::isfinite(squares[i]) && first_bad.empty()) first_bad = mine[i]->param;
    sum += squares[i];
  }
  return {sum, first_bad};
}

void ShardedAdamW::step(graph::Executor& ex, const std::function<kernels::AdamWParams(const std::string&)>& params) {
  const int ranks = comm_.world_size(), rank = comm_.rank();
  for (size_t k = 0; k < buckets_.size(); ++k) {
    const int64_t shard = buckets_[k].padded / ranks;
    // Update this rank's elements and pack them, in shard order, for the all-gather (the padding stays 0).
    Tensor packed = Tensor::zeros({shard}, DType::f32, device_);
    for (const Piece& p : pieces_) {
      if (p.bucket != k || p.rank != rank) continue;
      Tensor param = param_view(ex, p);
      Tensor exp_avg = exp_avg_[k].slice_rows(p.shard_begin, p.shard_begin + p.count);
      Tensor exp_avg_sq = exp_avg_sq_[k].slice_rows(p.shard_begin, p.shard_begin + p.count);
      kernels::adamw_step(param, grad_view(ex, p), exp_avg, exp_avg_sq, params(p.param));
      packed.slice_rows(p.shard_begin, p.shard_begin + p.count).copy_from(param);
    }
    Tensor gathered = Tensor::empty({ranks * shard}, DType::f32, device_);
    comm_.all_gather(packed, gathered);
    for (const Piece& p : pieces_)
      if (p.bucket == k && p.rank != rank)
        param_view(ex, p).copy_from(gathered.slice_rows(p.rank * shard + p.shard_begin,
                                                        p.rank * shard + p.shard_begin + p.count));
  }
}

std::vector<std::pair<std::string, Tensor>> ShardedAdamW::gather_state(const graph::Executor& ex) {
  const int ranks = comm_.world_size();
  std::vector<std::pair<std::string, Tensor>> state;
  for (size_t k = 0; k < buckets_.size(); ++k) {
    const int64_t shard = buckets_[k].padded / ranks;
    for (const auto& [prefix, mine] : {std::pair{"optimizer.exp_avg.", &exp_avg_[k]},
                                       std::pair{"optimizer.exp_avg_sq.", &exp_avg_sq_[k]}}) {
      Tensor full = Tensor::empty({ranks * shard}, DType::f32, device_);
      comm_.all_gather(*mine, full);
      const Tensor host = full.to(Device::cpu());
      std::set<std::string> done;
      for (const Piece& p : pieces_)  // every updated parameter of the bucket, once
        if (p.bucket == k && done.insert(p.param).second) {
          const model::GradientBucket::Slot& slot =
              *std::find_if(buckets_[k].slots.begin(), buckets_[k].slots.end(),
                            [&](const model::GradientBucket::Slot& s) { return s.param == p.param; });
          Tensor t = Tensor::empty(ex.get(p.param).shape(), DType::f32);
          t.copy_from(host.slice_rows(slot.offset, slot.offset + slot.numel).reshape(t.shape()));
          state.emplace_back(prefix + p.param, std::move(t));
        }
    }
  }
  return state;
}

void ShardedAdamW::load_state(const SafetensorsReader& reader, const std::string& path, const graph::Executor& ex) {
  for (const Piece& p : pieces_) {
    if (p.rank != comm_.rank()) continue;
    for (const auto& [prefix, state] : {std::pair{"optimizer.exp_avg.", &exp_avg_[p.bucket]},
                                        std::pair{"optimizer.exp_avg_sq.", &exp_avg_sq_[p.bucket]}}) {
      const std::string key = prefix + p.param;
      const SafetensorsEntry* e = reader.find(key);
      MFUSER_CHECK(e && e->dtype == "F32" && Shape(std::span(e->shape)) == ex.get(p.param).shape(), path, ": ", key,
                   e ? " has another dtype or shape than the parameter" : " is missing");
      const Tensor full = reader.view(key);
      state->slice_rows(p.shard_begin, p.shard_begin + p.count)
          .copy_from(full.reshape({full.numel()}).slice_rows(p.param_begin, p.param_begin + p.count));
    }
  }
}

}  // namespace mfuser::apps
