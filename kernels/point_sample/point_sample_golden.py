"""PyTorch golden data for kernels/point_sample (see tools/reference/op_golden.py).

The reference is mmcv's point_sample as tools/reference/mfuser_ref/losses.py writes it: F.grid_sample(input,
2 * points - 1 as [N, P, 1, 2], bilinear, zeros padding, align_corners=False), in float64. Tiny points include
pixel centres, the map's edges, points one pixel outside and far outside [0, 1]. Real cases: the Mask2Former
loss's mask logits [19, 1, 128, 128] and the 0/1 mask targets of two images [2 * 19, 1, 512, 512], each at 12544
points. The case table is mirrored in point_sample_test.cpp.

Backward: "<case>.grad_out" is a random upstream gradient, "<case>.grad_input" the float64 autograd gradient of
sum(grad_out * out). The targets case is forward only: targets carry no gradient (and its grad_input would double
the file)."""
import torch
import torch.nn.functional as F

# case -> (N, C, H, W, points, with backward)
CASES = {
    "tiny.edges": (2, 3, 3, 4, 40, True),
    "tiny.single": (1, 1, 1, 1, 11, True),
    "real.masks": (19, 1, 128, 128, 12544, True),
    "real.targets": (38, 1, 512, 512, 12544, False),
}


def point_sample_reference(input, points):
    out = F.grid_sample(input, points.unsqueeze(2) * 2.0 - 1.0, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out.squeeze(3)


def special(n):
    """Normalized coordinates whose pixel coordinate (c * n - 0.5) is: the first and last centres, the map's edges
    -0.5 and n - 0.5, -1 and n (one pixel outside the outer centres), -1.5, far outside, a hair off the middle."""
    return torch.tensor([0.5 / n, (n - 0.5) / n, 0.0, 1.0, -0.5 / n, 1 + 0.5 / n, -1.0 / n, 1 + 1.0 / n, -3.0, 4.0,
                         0.5 + 1e-7], dtype=torch.float64)


def golden(gen: torch.Generator) -> dict:
    out = {}
    for name, (n, c, h, w, count, backward) in CASES.items():
        if name == "real.targets":
            input = (torch.rand(n, c, h, w, generator=gen, dtype=torch.float64) < 0.3).double()
        else:
            input = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
        if name.startswith("tiny"):
            points = -0.2 + 1.4 * torch.rand(n, count, 2, generator=gen, dtype=torch.float64)
            pick = torch.arange(count)
            xs, ys = special(w), special(h)
            chosen = pick[::2]  # every other point probes a corner case in both x and y
            points[:, chosen, 0] = xs[(chosen // 2) % len(xs)]
            points[:, chosen, 1] = ys[(chosen // 2 * 3 + 1) % len(ys)]
        else:
            points = torch.rand(n, count, 2, generator=gen, dtype=torch.float64)
        # the kernel sees f32 inputs: the reference starts from exactly those values
        input, points = input.float(), points.float()
        out[f"{name}.input"] = input
        out[f"{name}.points"] = points
        leaf = input.double().requires_grad_(backward)
        result = point_sample_reference(leaf, points.double())
        out[f"{name}.out"] = result.detach().float()
        if backward:
            grad_out = torch.randn(result.shape, generator=gen, dtype=torch.float64).float()
            result.backward(grad_out.double())
            out[f"{name}.grad_out"] = grad_out
            out[f"{name}.grad_input"] = leaf.grad.float()
    return out
