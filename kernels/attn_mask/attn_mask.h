// attn_mask: the boolean mask of Mask2Former's masked attention, from mask logits (the tqdm head's
// forward_head and decoder loop): out = sigmoid(logits) < 0.5 (true = masked out), then every row (last dim)
// that came out all true is set all false, so a query whose predicted mask is empty attends everywhere
// instead of nowhere (a fully masked row would make attention NaN).
//
// Contract: logits f32 (or bf16 on CUDA) [..., N] (N >= 1), out boolean of the same shape, one device. sigmoid
// is evaluated as torch.sigmoid does, 1 / (1 + exp(-x)) in f32, and compared with 0.5: this is `x < 0` except
// for |x| below ~1e-7, where the f32 sigmoid rounds to 0.5 (not masked). MFuser: [B, 1, 19, h*w] at h*w = 256,
// 1024, 4096.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void attn_mask(const Tensor& logits, Tensor& out);  // dispatches on the device

namespace cpu {
void attn_mask(const Tensor& logits, Tensor& out);
}
namespace cuda {
void attn_mask(const Tensor& logits, Tensor& out);
}

}  // namespace mfuser::kernels
