// embedding: out[..., :] = table[ids[...], :], i.e. F.embedding(ids, table) (forward; no padding_idx or
// max_norm, which only matter for training or are unused).
//
// ids: i64 of any shape (0-d included; at most 5 dims, so out fits the 6-dim limit). table: f32 [V, D].
// out: f32 [*ids.shape, D]. Every id must lie in [0, V): an id outside throws, naming it and its position,
// as PyTorch raises "index out of range" (nothing is written then). Rows are copied bit for bit.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void embedding(const Tensor& ids, const Tensor& table, Tensor& out);

namespace cpu {
void embedding(const Tensor& ids, const Tensor& table, Tensor& out);
}

}  // namespace mfuser::kernels
