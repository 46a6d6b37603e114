"""MVFuser: the modified Mamba block that fuses the two encoders (and the text/visual tokens in the
context decoder), with its selective scan and gated RMSNorm, in plain fp32 torch.

Shapes follow the official module: the block maps [B, L, d] -> [B, L, d]; inside, channels are
split in two halves of d/2 (x goes through the scan, z is the gate).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def selective_scan(u, delta, A, B, C, D, delta_bias=None, delta_softplus=True):
    """Selective scan with input-dependent B and C shared over channels (one direction).

    u, delta: [b, d, l]; A: [d, n]; B, C: [b, n, l]; D: [d]; delta_bias: [d]. Returns y [b, d, l].

        delta_t = softplus(delta_t + delta_bias)
        h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t        (h_{-1} = 0, h_t: [b, d, n])
        y_t = <h_t, C_t> + D * u_t

    Computed in float32 (the CUDA kernel's precision) for float32 and lower-precision inputs, in
    float64 for float64 inputs (for tests). The recurrence runs as a loop over l on [b, d, n]
    slices: the sequences here are short (2050 tokens) and the loop is exact, unlike closed forms
    that divide by cumulative products of the decays.
    """
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    u = u.to(dtype)
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        # softplus with threshold 20, as the kernel: x > 20 -> x, else log1p(exp(x))
        delta = F.softplus(delta)
    # time-major layouts so that each step reads one contiguous [b, d, n] block
    delta_t = delta.permute(2, 0, 1)                                   # [l, b, d]
    decay = torch.exp(delta_t.unsqueeze(-1) * A.to(dtype))             # [l, b, d, n]
    drive = (delta_t * u.permute(2, 0, 1)).unsqueeze(-1) * B.to(dtype).permute(2, 0, 1).unsqueeze(2)
    h = u.new_zeros(decay.shape[1:])
    states = []
    # unbind, not decay[t]: each indexing's backward would add a zero-padded copy of the whole [l, b, d, n]
    # gradient, quadratic in l (hours for a ViT-L training step); unbind's backward is one stack
    for decay_t, drive_t in zip(decay.unbind(0), drive.unbind(0)):
        h = decay_t * h + drive_t
        states.append(h)
    states = torch.stack(states)                                       # [l, b, d, n]
    y = torch.einsum("lbdn,bnl->bdl", states, C.to(dtype))
    return y + u * D.to(dtype)[:, None]


class RMSNormGated(nn.Module):
    """RMSNorm over the last dim followed by a SiLU gate (norm_before_gate=True, no bias):
    out = x / sqrt(mean(x^2) + eps) * weight * silu(z)."""

    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x, z):
        rstd = 1.0 / torch.sqrt(x.square().mean(dim=-1, keepdim=True) + self.eps)
        return x * rstd * self.weight * F.silu(z)


class MVFuser(nn.Module):
    """Mamba-style fusion block (official ``MVFuser``; expand=1, d_conv=3, no in/out bias).

    in_proj d -> d, split into x and z (d/2 each); both go through a depthwise conv1d (kernel
    d_conv, 'same' padding, i.e. non-causal) and SiLU; x feeds the selective scan whose dt, B, C
    come from x_proj; gated RMSNorm with z; out_proj d/2 -> d; dropout; times the scalar ``scale``.
    """

    def __init__(self, d_model, d_state=8, d_conv=3, expand=1, dt_rank="auto", dt_min=0.001,
                 dt_max=0.1, dt_scale=1.0, dt_init_floor=1e-4, proj_drop=0.1):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.dt_min, self.dt_max, self.dt_scale, self.dt_init_floor = dt_min, dt_max, dt_scale, dt_init_floor
        half = self.d_inner // 2
        # registration order as upstream, so that state_dict() lists the keys in the same order
        self.in_proj = nn.Linear(d_model, self.d_inner, bias=False)
        self.x_proj = nn.Linear(half, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, half, bias=True)
        self.A_log = nn.Parameter(torch.empty(half, d_state))
        self.D = nn.Parameter(torch.empty(half))
        self.out_proj = nn.Linear(half, d_model, bias=False)
        self.proj_drop = nn.Dropout(proj_drop)
        # Upstream passes bias=conv_bias//2 with conv_bias=True: True//2 == 0, so no conv bias.
        # Upstream calls F.conv1d(..., padding='same') with these weights; the module does the same.
        self.conv1d_x = nn.Conv1d(half, half, kernel_size=d_conv, groups=half, padding="same", bias=False)
        self.conv1d_z = nn.Conv1d(half, half, kernel_size=d_conv, groups=half, padding="same", bias=False)
        self.norm = RMSNormGated(half, eps=1e-5)
        self.scale = nn.Parameter(torch.tensor(0.001))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """The upstream constructor's initialisation (Mamba's dt/A/D init, scale 1e-3)."""
        for m in (self.in_proj, self.x_proj, self.out_proj, self.conv1d_x, self.conv1d_z):
            m.reset_parameters()
        half = self.d_inner // 2
        dt_init_std = self.dt_rank ** -0.5 * self.dt_scale
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        dt = torch.exp(torch.rand(half) * (math.log(self.dt_max) - math.log(self.dt_min))
                       + math.log(self.dt_min)).clamp(min=self.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))     # inverse softplus
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(half, -1))
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)
        self.scale.fill_(0.001)

    def forward(self, hidden_states):
        """hidden_states [B, L, d] -> [B, L, d]."""
        seqlen = hidden_states.shape[1]
        xz = self.in_proj(hidden_states).transpose(1, 2)               # [B, d, L]
        x, z = xz.chunk(2, dim=1)
        A = -torch.exp(self.A_log)
        x = F.silu(self.conv1d_x(x))
        z = F.silu(self.conv1d_z(z))
        x_dbl = self.x_proj(x.transpose(1, 2))                          # [B, L, dt_rank + 2n]
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt_proj applies its bias here, and the same bias is passed again as delta_bias below:
        # upstream adds dt_proj.bias twice before the softplus.
        dt = self.dt_proj(dt).transpose(1, 2)                           # [B, d/2, L]
        B = B.transpose(1, 2).contiguous()                              # [B, n, L]
        C = C.transpose(1, 2).contiguous()
        assert dt.shape[-1] == seqlen
        y = selective_scan(x, dt, A, B, C, self.D, delta_bias=self.dt_proj.bias, delta_softplus=True)
        y = self.norm(y.transpose(1, 2), z.transpose(1, 2))
        out = self.proj_drop(self.out_proj(y))
        return out * self.scale
