"""PyTorch golden data for kernels/gemm (gemm and linear; see tools/reference/op_golden.py)."""
import torch
import torch.nn.functional as F

from counter_random import counter_uniform

# Row blocks stored of the largest real output (all of it would be 44 MB): first, middle, last rows.
BLOCK_ROWS = 512
# Row blocks stored of the real-size grad_x (the file is near its size budget).
GRAD_BLOCK_ROWS = 128


def _gemm_case(out: dict, name: str, a, b, result, m, n, k, trans_a=False, trans_b=False, alpha=1.0, beta=0.0,
               batch=1, strides=(0, 0, 0), c_in=None) -> None:
    """Stores operands, PyTorch's f64 result and the GemmParams that describe it (`params`: m, n, k,
    trans_a, trans_b, batch, stride_a, stride_b, stride_c; `scalars`: alpha, beta)."""
    out[f"{name}.a"], out[f"{name}.b"] = a, b
    if c_in is not None:
        out[f"{name}.c"] = c_in
    out[f"{name}.out"] = result.float()
    out[f"{name}.params"] = torch.tensor([m, n, k, int(trans_a), int(trans_b), batch, *strides])
    out[f"{name}.scalars"] = torch.tensor([alpha, beta], dtype=torch.float32)


def _blocks(out: dict, name: str, result: torch.Tensor, block: int = BLOCK_ROWS) -> None:
    rows = result.shape[0]
    starts = [0, rows // 2 - block // 2, rows - block]
    out[f"{name}.blocks"] = torch.tensor([[s, s + block] for s in starts], dtype=torch.int64)
    out[f"{name}.out"] = torch.cat([result[s:s + block] for s in starts]).float()


def _linear_grads(x, w, grad_y):
    """PyTorch autograd of F.linear(x, w, b) in f64: (grad_x, grad_weight, grad_bias)."""
    x, w = x.double().requires_grad_(), w.double().requires_grad_()
    b = torch.zeros(w.shape[0], dtype=torch.float64, requires_grad=True)
    F.linear(x, w, b).backward(grad_y.double())
    return x.grad, w.grad, b.grad


def _backward_cases(out: dict, gen: torch.Generator) -> None:
    """linear_backward: the tiny linear cases with a stored upstream gradient (`<case>.grad_y`, whole
    `.grad_x`, `.grad_weight`, `.grad_bias`); at the real sizes 2050 x 1024 -> 1024 (x, weight =
    real.tokens.a, real.tokens.b) and 5376 x 256 -> 2048 (linear.ffn's x and weight) the upstream gradient is
    counter_uniform(y's shape, salt 1 resp. 2), recomputed by the test, and grad_x is stored in row blocks
    (`<case>.grad_x.blocks` / `.grad_x.out`)."""
    for name in ("linear.tiny_bias", "linear.tiny"):
        x, w = out[f"{name}.x"], out[f"{name}.weight"]
        grad_y = torch.randn(*x.shape[:-1], w.shape[0], generator=gen)
        gx, gw, gb = _linear_grads(x, w, grad_y)
        out.update({f"{name}.grad_y": grad_y, f"{name}.grad_x": gx.float(), f"{name}.grad_weight": gw.float(),
                    f"{name}.grad_bias": gb.float()})
    for name, x, w, salt in (("backward.tokens", out["real.tokens.a"], out["real.tokens.b"], 1),
                             ("backward.ffn", out["linear.ffn.x"], out["linear.ffn.weight"], 2)):
        gx, gw, gb = _linear_grads(x, w, counter_uniform((x.shape[0], w.shape[0]), salt))
        _blocks(out, f"{name}.grad_x", gx, GRAD_BLOCK_ROWS)
        out.update({f"{name}.grad_weight": gw.float(), f"{name}.grad_bias": gb.float()})


def golden(gen: torch.Generator) -> dict:
    """gemm: all four transpose combinations with alpha/beta, batches with a broadcast B or A (stride 0),
    attention's q k^T, and the real 2050 x 1024 x 1024; linear: tiny with and without bias, the CLIP
    in_proj 1025 x 1024 @ (3072 x 1024)^T and the pixel decoder FFN 5376 x 256 @ (2048 x 256)^T.
    Real inputs are stored as f16 (exact in f32) to keep the file small."""
    out = {}
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    d = torch.Tensor.double
    m, n, k = 13, 17, 11

    a, b = r(m, k), r(k, n)
    _gemm_case(out, "tiny.nn", a, b, d(a) @ d(b), m, n, k)
    a, b = r(m, k), r(n, k)
    _gemm_case(out, "tiny.nt", a, b, 0.5 * d(a) @ d(b).T, m, n, k, trans_b=True, alpha=0.5)
    a, b, c = r(k, m), r(k, n), r(m, n)
    _gemm_case(out, "tiny.tn", a, b, d(a).T @ d(b) - 0.5 * d(c), m, n, k, trans_a=True, beta=-0.5, c_in=c)
    a, b, c = r(k, m), r(n, k), r(m, n)
    _gemm_case(out, "tiny.tt", a, b, torch.addmm(d(c), d(a).T, d(b).T, beta=1.25, alpha=2.0), m, n, k,
               trans_a=True, trans_b=True, alpha=2.0, beta=1.25, c_in=c)

    a, b = r(3, m, k), r(k, n)  # a weight shared by the batch
    _gemm_case(out, "tiny.batch_shared_b", a, b, torch.matmul(d(a), d(b)), m, n, k, batch=3,
               strides=(m * k, 0, m * n))
    a, b = r(9, 10), r(4, 10, 8)  # one attention matrix applied to 4 value batches
    _gemm_case(out, "tiny.batch_shared_a", a, b, torch.matmul(d(a), d(b)), 9, 8, 10, batch=4,
               strides=(0, 80, 72))
    q, key, c = r(4, 9, 8), r(4, 10, 8), r(4, 9, 10)  # q k^T * scale + mask, as baddbmm in attention
    _gemm_case(out, "tiny.batch_qk", q, key, torch.baddbmm(d(c), d(q), d(key).transpose(1, 2), alpha=8 ** -0.5),
               9, 10, 8, trans_b=True, alpha=8 ** -0.5, beta=1.0, batch=4, strides=(72, 80, 90), c_in=c)

    a, b = r(2050, 1024).half(), (r(1024, 1024) / 32).half()
    _gemm_case(out, "real.tokens", a, b, d(a) @ d(b), 2050, 1024, 1024)

    x, w, bias = r(2, 3, k), r(7, k), r(7)
    out.update({"linear.tiny_bias.x": x, "linear.tiny_bias.weight": w, "linear.tiny_bias.bias": bias,
                "linear.tiny_bias.out": F.linear(d(x), d(w), d(bias)).float()})
    x, w = r(5, k), r(7, k)
    out.update({"linear.tiny.x": x, "linear.tiny.weight": w, "linear.tiny.out": F.linear(d(x), d(w)).float()})

    x, w, bias = r(1025, 1024).half(), (r(3072, 1024) / 32).half(), r(3072)
    out.update({"linear.in_proj.x": x, "linear.in_proj.weight": w, "linear.in_proj.bias": bias,
                "linear.in_proj.out": F.linear(d(x), d(w), d(bias)).float()})
    x, w, bias = r(5376, 256).half(), (r(2048, 256) / 16).half(), r(2048)
    out.update({"linear.ffn.x": x, "linear.ffn.weight": w, "linear.ffn.bias": bias})
    _blocks(out, "linear.ffn", F.linear(d(x), d(w), d(bias)))

    _backward_cases(out, gen)
    return out
