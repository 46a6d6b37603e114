"""Tests of the selective scan and the MVFuser block (tools/reference/mfuser_ref/mamba.py).

The scan's loop is checked against the closed form h_t = sum_{s<=t} exp(A (S_t - S_s)) delta_s u_s B_s
(S = cumulative sum of delta) in float64, and the MVFuser block against a from-the-formulas
re-implementation (double dt bias, non-causal depthwise conv, gated RMSNorm, scale).

Run: /usr/bin/python3 -m unittest tests.oracle.test_scan   (MFUSER_SEED=N to repeat a run)
"""

import unittest

if __package__:
    from .seeding import SeededTestCase
else:  # run as a script
    from seeding import SeededTestCase

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mfuser_ref.mamba import MVFuser, selective_scan  # noqa: E402


def softplus_ref(x):
    """softplus with the kernel's threshold: x above 20 passes through."""
    return torch.where(x > 20, x, torch.log1p(torch.exp(torch.clamp(x, max=20))))


def scan_closed_form(u, delta, A, B, C, D, delta_bias):
    """y_t = sum_n C_tn sum_{s<=t} exp(A_n (S_t - S_s)) delta_s u_s B_sn + D u_t, all pairs at once."""
    delta = softplus_ref(delta + delta_bias[:, None])                     # [b, d, l]
    S = torch.cumsum(delta, dim=-1)
    L = u.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()                    # [t, s]: s <= t
    gap = torch.where(causal, S[..., :, None] - S[..., None, :], torch.zeros((), dtype=u.dtype))
    kernel = torch.exp(gap[..., None] * A[None, :, None, None, :]) * causal[..., None]   # [b, d, t, s, n]
    y = torch.einsum("bdtsn,bds,bns,bnt->bdt", kernel, delta * u, B, C)
    return y + D[:, None] * u


def random_scan_inputs(b, d, n, l, dtype):
    u = torch.randn(b, d, l, dtype=dtype)
    delta = torch.randn(b, d, l, dtype=dtype)
    delta_bias = torch.randn(d, dtype=dtype) - 1.0
    A = -torch.exp(torch.randn(d, n, dtype=dtype))
    B = torch.randn(b, n, l, dtype=dtype)
    C = torch.randn(b, n, l, dtype=dtype)
    D = torch.randn(d, dtype=dtype)
    return u, delta, A, B, C, D, delta_bias


class TestSelectiveScan(SeededTestCase):
    def test_matches_closed_form_float64(self):
        u, delta, A, B, C, D, bias = random_scan_inputs(2, 5, 4, 37, torch.float64)
        delta[0, 0, 3] = 25.0                                  # beyond the softplus threshold
        y = selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True)
        self.assertEqual(y.dtype, torch.float64)
        ref = scan_closed_form(u, delta, A, B, C, D, bias)
        torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)

    def test_float32_tracks_float64_on_a_long_sequence(self):
        # the backbone's length (2 x 1025 tokens), a few channels
        inputs = random_scan_inputs(1, 8, 16, 2050, torch.float64)
        y64 = selective_scan(*inputs[:6], delta_bias=inputs[6])
        y32 = selective_scan(*[t.float() for t in inputs[:6]], delta_bias=inputs[6].float())
        self.assertEqual(y32.dtype, torch.float32)
        err = (y32.double() - y64).norm() / y64.norm()
        self.assertLess(err.item(), 1e-6)

    def test_gradients(self):
        inputs = [t.requires_grad_() for t in random_scan_inputs(1, 2, 3, 6, torch.float64)]
        self.assertTrue(torch.autograd.gradcheck(
            lambda u, dt, A, B, C, D, bias: selective_scan(u, dt, A, B, C, D, delta_bias=bias), inputs))


class TestMVFuser(SeededTestCase):
    def manual_forward(self, m, hidden):
        """MVFuser from its formulas, float64, eval mode."""
        half = m.d_inner // 2
        xz = hidden @ m.in_proj.weight.T                                   # [B, L, d]
        x, z = xz[..., :half], xz[..., half:]

        def dwconv_same(v, w):                                            # v [B, L, c], w [c, 1, k]
            k = w.shape[-1]
            vp = F.pad(v.transpose(1, 2), ((k - 1) // 2, k // 2))          # centred: non-causal
            return sum(vp[..., j:j + v.shape[1]] * w[:, 0, j, None] for j in range(k)).transpose(1, 2)

        x = F.silu(dwconv_same(x, m.conv1d_x.weight))
        z = F.silu(dwconv_same(z, m.conv1d_z.weight))
        proj = x @ m.x_proj.weight.T
        dt_in, Bm, Cm = proj.split([m.dt_rank, m.d_state, m.d_state], dim=-1)
        # the dt bias enters twice: once in dt_proj, once as the scan's delta_bias
        dt = dt_in @ m.dt_proj.weight.T + m.dt_proj.bias
        y = scan_closed_form(x.transpose(1, 2), dt.transpose(1, 2), -torch.exp(m.A_log),
                             Bm.transpose(1, 2), Cm.transpose(1, 2), m.D, m.dt_proj.bias).transpose(1, 2)
        y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * m.norm.weight * F.silu(z)
        return (y @ m.out_proj.weight.T) * m.scale

    def test_matches_formulas_float64(self):
        m = MVFuser(24, d_state=4).double().eval()
        self.assertEqual(m.dt_rank, 2)
        with torch.no_grad():                                   # move off the init's special values
            for p in (m.norm.weight, m.D, m.A_log, m.scale):
                p.add_(0.3 * torch.randn_like(p))
        hidden = torch.randn(2, 19, 24, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(m(hidden), self.manual_forward(m, hidden), rtol=1e-9, atol=1e-12)

    def test_dropout_only_in_training(self):
        m = MVFuser(16, d_state=4).eval()
        hidden = torch.randn(1, 9, 16)
        with torch.no_grad():
            a, b = m(hidden), m(hidden)
            self.assertTrue(torch.equal(a, b))
            m.train()
            c = m(hidden)
        self.assertFalse(torch.equal(a, c))            # proj_drop 0.1 masks some outputs

    def test_init(self):
        m = MVFuser(64, d_state=16)
        self.assertEqual(m.dt_rank, 4)
        self.assertEqual(tuple(m.x_proj.weight.shape), (4 + 32, 32))
        self.assertIsNone(m.conv1d_x.bias)
        self.assertIsNone(m.conv1d_z.bias)
        self.assertAlmostEqual(m.scale.item(), 1e-3, places=9)
        torch.testing.assert_close(m.A_log, torch.log(torch.arange(1.0, 17.0)).expand(32, 16))
        dt = F.softplus(m.dt_proj.bias)                        # inverse-softplus init: dt in [1e-3, 0.1]
        self.assertTrue(bool(((dt > 0.999e-3) & (dt < 0.1001)).all()))


if __name__ == "__main__":
    unittest.main()
