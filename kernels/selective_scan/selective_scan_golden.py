"""PyTorch golden data for kernels/selective_scan (see tools/reference/op_golden.py).

The reference is a float64 loop over time written from the scan's definition (mamba_ssm's selective_scan_ref
semantics, no z gate): dt = softplus(delta + delta_bias), h_t = exp(dt * A) * h_{t-1} + dt * B_t * u_t,
y_t = <h_t, C_t> + D * u_t. Inputs look like MVFuser's: u is a SiLU output, delta already holds dt_proj's bias
(which comes again as delta_bias), A = -exp(A_log) near -(1..N). The case table is mirrored in
selective_scan_test.cpp.

Backward: "<case>.grad_out" is a random upstream gradient of y, and "<case>.grad_<input>" the float64 autograd
gradients of sum(grad_out * y) through the same loop (y only: the backward takes no last-state gradient)."""
import math

import torch
import torch.nn.functional as F

# case -> (batch, channels, length, state, with D, with delta_bias, delta_softplus, with softplus outliers)
CASES = {
    "tiny.full": (2, 5, 17, 4, True, True, True, True),
    "tiny.plain": (1, 3, 9, 3, False, False, False, False),
    "tiny.one_step": (1, 2, 1, 2, True, True, True, True),
    "real.backbone": (1, 512, 2050, 16, True, True, True, False),   # d_inner/2 = 512 over 2 x 1025 tokens
    "real.context": (1, 128, 1063, 16, True, True, True, False),    # context decoder: 19 + 1025 + 19 tokens
}


def scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus):
    """All float64. Returns y [b, d, l] and the last state [b, d, n]."""
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    batch, channels, _ = u.shape
    h = torch.zeros(batch, channels, A.shape[1], dtype=torch.float64)
    # Per-step slices from unbind and outputs stacked at the end: autograd of per-step indexing or of in-place
    # writes into y would cost a full-size tensor per step (O(L^2)).
    steps = zip(dt.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1))
    ys = []
    for step, u_t, b_t, c_t in steps:
        step = step[:, :, None]
        h = torch.exp(step * A) * h + (step * u_t[:, :, None]) * b_t[:, None, :]
        ys.append((h * c_t[:, None, :]).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D[:, None] * u
    return y, h


def mvfuser_like_inputs(gen, batch, channels, length, state, delta_softplus, outliers):
    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    u = F.silu(randn(batch, channels, length))
    # dt_proj's bias: softplus^-1 of dt drawn log-uniformly in [1e-3, 1e-1] (Mamba's init)
    dt0 = torch.exp(torch.rand(channels, generator=gen, dtype=torch.float64) * math.log(100) + math.log(1e-3))
    dt_bias = dt0 + torch.log(-torch.expm1(-dt0))
    if delta_softplus:
        # dt_proj's output around its bias, spread so that dt spans ~1e-9 .. 3 and the scan term of y is
        # as large as the D * u term (with dt ~ 1e-4 everywhere, y would be mostly D * u and test little)
        delta = 2 * randn(batch, channels, length) + dt_bias[:, None]
        if outliers:  # softplus's two far ends: the identity above 20 (30 + bias > 20), ~exp(x) far below 0
            delta.view(-1)[::7] = 30.0
            delta.view(-1)[3::11] = -30.0
    else:
        delta = 0.1 * torch.rand(batch, channels, length, generator=gen, dtype=torch.float64)
    A = -torch.arange(1, state + 1, dtype=torch.float64) * torch.exp(0.1 * randn(channels, state))
    B = randn(batch, state, length)
    C = randn(batch, state, length)
    D = 1 + 0.1 * randn(channels)
    return u, delta, A, B, C, D, dt_bias


def scan_gradients(gen, wide, delta_softplus, name):
    """float64 autograd of the reference loop for a random N(0, 1) upstream gradient of y."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in wide.items()}
    y, _ = scan_reference(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves.get("D"),
                          leaves.get("delta_bias"), delta_softplus)
    grad_out = torch.randn(y.shape, generator=gen, dtype=torch.float64).float()
    y.backward(grad_out.double())
    out = {f"{name}.grad_out": grad_out}
    out.update({f"{name}.grad_{k}": v.grad.float() for k, v in leaves.items()})
    return out


def golden(gen: torch.Generator) -> dict:
    out = {}
    for name, (batch, channels, length, state, with_d, with_bias, softplus, outliers) in CASES.items():
        u, delta, A, B, C, D, dt_bias = mvfuser_like_inputs(gen, batch, channels, length, state, softplus, outliers)
        D = D if with_d else None
        dt_bias = dt_bias if with_bias else None
        # the kernel sees f32 inputs: the reference starts from exactly those values
        inputs = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "delta_bias": dt_bias}
        inputs = {k: v.float() for k, v in inputs.items() if v is not None}
        wide = {k: v.double() for k, v in inputs.items()}
        y, last = scan_reference(wide["u"], wide["delta"], wide["A"], wide["B"], wide["C"], wide.get("D"),
                                 wide.get("delta_bias"), softplus)
        out.update({f"{name}.{k}": v for k, v in inputs.items()})
        out[f"{name}.y"] = y.float()
        out[f"{name}.last_state"] = last.float()
        out.update(scan_gradients(gen, wide, softplus, name))
    return out
