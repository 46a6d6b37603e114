// selective_scan: Mamba's selective scan (S6), one direction, f32 state, with input-dependent B and C shared by
// all channels ("variable B/C" of shape [batch, N, L]): the semantics of mamba_ssm's selective_scan_ref(u, delta,
// A, B, C, D, z=None, delta_bias, delta_softplus, return_last_state) for real A.
//
// Contract (f32, or bf16 on CUDA: one dtype for every float tensor; one device): u, delta [Bt, D, L]; A [D, N];
// B, C [Bt, N, L]; D [D] or undefined (no skip term); delta_bias [D] or undefined; y [Bt, D, L]; last_state
// [Bt, D, N] or nullptr (not wanted). For each (b, d):
//   dt_t   = delta[b, d, t] + delta_bias[d], then softplus(dt_t) if delta_softplus (F.softplus: identity above 20)
//   h_t[n] = exp(dt_t * A[d, n]) * h_{t-1}[n] + dt_t * B[b, n, t] * u[b, d, t]        (h_{-1} = 0)
//   y[b, d, t] = sum_n h_t[n] * C[b, n, t] + D[d] * u[b, d, t]
//   last_state[b, d, n] = h_{L-1}[n]
// No z gate: MFuser gates in rmsnorm_gated instead. MFuser's MVFuser adds dt_proj's bias twice (inside the
// dt_proj Linear that produced `delta`, and again as delta_bias); this op adds exactly the delta_bias it is given,
// so the caller passes both as upstream does. Sequences (b, d) are independent; each runs in f32 (state and all
// arithmetic, also for bf16 storage). The CUDA kernel holds at most 256 states (N <= 256).
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

// Backward of selective_scan with respect to y only (MFuser never uses last_state, so it has no gradient input).
// Takes the forward's inputs (nothing else is saved: each sequence's states are recomputed into a per-thread
// [L, N] f32 buffer, then one reverse sweep carries the f32 adjoint of h), and grad_y [Bt, D, L]. OVERWRITES:
//   grad_u, grad_delta [Bt, D, L]; grad_A [D, N]; grad_B, grad_C [Bt, N, L];
//   grad_D, grad_delta_bias [D]: defined exactly when D, delta_bias are (undefined otherwise).
// grad_delta is the gradient through the softplus (F.softplus's: 1 above 20, sigmoid below). grad_delta_bias is
// only the gradient of this op's own use of delta_bias (the sum of grad_delta over batch and time): MVFuser's
// dt_proj bias also entered `delta` through the dt_proj Linear, and the caller adds that Linear's bias gradient
// itself. Gradients have u's dtype (f32, or bf16 on CUDA). On the CPU, sums over time, channels and batch
// (grad_A, grad_B, grad_C, grad_D, grad_delta_bias) run in double; the result is deterministic for any thread
// count. It runs on CUDA too (N <= 256): per sequence the states are recomputed per time chunk from f32
// checkpoints and swept in reverse with the adjoint in registers; the sums run in f32 through per-(b, channel
// block) and per-(b, d) partials reduced in a fixed order (no atomics: bitwise reproducible). Scratch: about
// 2 Bt ceil(D / channels per block) N L + Bt D (N + 2) + Bt D N ceil(L / chunk) floats.
void selective_scan_backward(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                             const Tensor& C, const Tensor& D, const Tensor& delta_bias, const Tensor& grad_y,
                             Tensor& grad_u, Tensor& grad_delta, Tensor& grad_A, Tensor& grad_B, Tensor& grad_C,
                             Tensor& grad_D, Tensor& grad_delta_bias, bool delta_softplus);  // dispatches

void selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                    const Tensor& D, const Tensor& delta_bias, Tensor& y, Tensor* last_state,
                    bool delta_softplus);  // dispatches on the device

namespace cuda {
void selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                    const Tensor& D, const Tensor& delta_bias, Tensor& y, Tensor* last_state, bool delta_softplus);
void selective_scan_backward(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                             const Tensor& C, const Tensor& D, const Tensor& delta_bias, const Tensor& grad_y,
                             Tensor& grad_u, Tensor& grad_delta, Tensor& grad_A, Tensor& grad_B, Tensor& grad_C,
                             Tensor& grad_D, Tensor& grad_delta_bias, bool delta_softplus);
}

namespace cpu {
void selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                    const Tensor& D, const Tensor& delta_bias, Tensor& y, Tensor* last_state, bool delta_softplus);
void selective_scan_backward(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                             const Tensor& C, const Tensor& D, const Tensor& delta_bias, const Tensor& grad_y,
                             Tensor& grad_u, Tensor& grad_delta, Tensor& grad_A, Tensor& grad_B, Tensor& grad_C,
                             Tensor& grad_D, Tensor& grad_delta_bias, bool delta_softplus);
}

}  // namespace mfuser::kernels
