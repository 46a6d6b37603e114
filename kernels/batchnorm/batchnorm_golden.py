"""PyTorch golden data for kernels/batchnorm (see tools/reference/op_golden.py)."""
import torch
import torch.nn.functional as F

# The FPN's BatchNorm2d(2048) runs on 64x64 maps; "real" keeps the 2048 channels at 32x32 so the file stays
# small (the kernel treats every spatial size alike). eps 1e-5 throughout.
CASES = [("tiny", (2, 5, 3, 4)),
         ("tiny_2d", (6, 3)),                  # no spatial dims (BatchNorm1d layout)
         ("real", (1, 2048, 32, 32))]
EPS = 1e-5
MOMENTUM = 0.1


def golden(gen: torch.Generator) -> dict:
    """Per case: x, running statistics, weight, bias and F.batch_norm's eval output in float64 (stored f32), a
    random grad_out and autograd's eval-mode gradients (grad_x, grad_weight, grad_bias). Under "<case>_train":
    the training-mode output, batch statistics (save_mean, save_rstd), the updated running statistics and the
    training-mode gradients for the same grad_out. All in float64."""
    out = {}
    for name, shape in CASES:
        c = shape[1]
        x = torch.randn(shape, generator=gen) * 2 + 0.5
        mean = torch.randn(c, generator=gen)
        var = torch.rand(c, generator=gen) * 4 + 0.1
        weight = 1 + 0.5 * torch.randn(c, generator=gen)
        bias = 0.5 * torch.randn(c, generator=gen)
        grad_out = torch.randn(shape, generator=gen)
        inputs = [t.double().requires_grad_() for t in (x, weight, bias)]
        ref = F.batch_norm(inputs[0], mean.double(), var.double(), inputs[1], inputs[2], training=False, eps=EPS)
        grads = torch.autograd.grad(ref, inputs, grad_out.double())
        out.update({f"{name}.x": x, f"{name}.running_mean": mean, f"{name}.running_var": var,
                    f"{name}.weight": weight, f"{name}.bias": bias, f"{name}.out": ref.detach().float(),
                    f"{name}.grad_out": grad_out})
        out.update({f"{name}.grad_{arg}": g.float() for arg, g in zip(("x", "weight", "bias"), grads)})

        running_mean, running_var = mean.double(), var.double()  # updated in place by F.batch_norm
        ref = F.batch_norm(inputs[0], running_mean, running_var, inputs[1], inputs[2], training=True,
                           momentum=MOMENTUM, eps=EPS)
        grads = torch.autograd.grad(ref, inputs, grad_out.double())
        dims = [0] + list(range(2, len(shape)))
        xd = x.double()
        train = {"out": ref.detach(), "save_mean": xd.mean(dims),
                 "save_rstd": torch.rsqrt(xd.var(dims, unbiased=False) + EPS),
                 "running_mean": running_mean, "running_var": running_var}
        train.update({f"grad_{arg}": g for arg, g in zip(("x", "weight", "bias"), grads)})
        out.update({f"{name}_train.{key}": t.float() for key, t in train.items()})
    return out
