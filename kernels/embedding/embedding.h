// embedding: out[..., :] = table[ids[...], :], i.e. F.embedding(ids, table) (forward; no padding_idx or
// max_norm, which only matter for training or are unused).
//
// ids: i64 of any shape (0-d included; at most 5 dims, so out fits the 6-dim limit). table: f32 (or bf16 on
// CUDA) [V, D]. out: [*ids.shape, D], table's dtype. Every id must lie in [0, V): on the CPU an id outside
// throws, naming it and its position, as PyTorch raises "index out of range" (nothing is written then). The
// CUDA kernel cannot throw without synchronizing the stream (forbidden under CUDA-graph capture): it fills
// that id's output row with NaN (all bits set) instead. Rows are copied bit for bit.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void embedding(const Tensor& ids, const Tensor& table, Tensor& out);

namespace cpu {
void embedding(const Tensor& ids, const Tensor& table, Tensor& out);
}
namespace cuda {
void embedding(const Tensor& ids, const Tensor& table, Tensor& out);
}

}  // namespace mfuser::kernels
