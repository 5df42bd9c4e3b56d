"""Fixtures for the vision ops: conv2d (ConvNeXt's stem, downsample and 7x7
depthwise, and a grouped / strided / dilated case), avg_pool2d,
adaptive_avg_pool2d and timm's LayerNorm2d, in float32: inputs, outputs and
the gradients of sum(y * gy) for a random gy.

    /tmp/venv/bin/python tools/make_conv_fixture.py   # writes tests/fixtures/conv/*.json

Each tensor is {"shape": [...], "data": [...]} (row-major, 9 significant
digits, which round-trips float32). Versions: tools/requirements.txt.
"""
import json
import pathlib

import timm
import torch
import torch.nn.functional as F

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "conv"


def t(x):
    x = x.detach().to(torch.float32).contiguous()
    return {"shape": list(x.shape), "data": [float("%.9g" % v) for v in x.flatten().tolist()]}


def rand(gen, *shape):
    return (torch.rand(*shape, generator=gen) * 2 - 1).requires_grad_()


def run(fn, inputs, gen):
    y = fn(*inputs)
    gy = torch.rand(y.shape, generator=gen) * 2 - 1
    grads = torch.autograd.grad(y, [i for i in inputs if i is not None], gy)
    return y, gy, grads


def conv_cases(gen):
    cases = []
    specs = [
        # name, x shape, w shape, stride, padding, dilation, groups
        ("stem 4x4/4", (1, 3, 8, 12), (8, 3, 4, 4), 4, 0, 1, 1),
        ("downsample 2x2/2", (2, 4, 6, 7), (6, 4, 2, 2), 2, 0, 1, 1),
        ("depthwise 7x7 pad 3", (2, 3, 9, 10), (3, 1, 7, 7), 1, 3, 1, 3),
        ("grouped 3x3 stride 2 pad 2 dilation 2", (1, 4, 9, 8), (6, 2, 3, 3), 2, 2, 2, 2),
    ]
    for name, xs, ws, stride, padding, dilation, groups in specs:
        x, w, b = rand(gen, *xs), rand(gen, *ws), rand(gen, ws[0])
        fn = lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
        y, gy, (gx, gw, gb) = run(fn, [x, w, b], gen)
        cases.append({"name": name, "stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
                      "x": t(x), "weight": t(w), "bias": t(b), "y": t(y), "gy": t(gy),
                      "grad_x": t(gx), "grad_weight": t(gw), "grad_bias": t(gb)})
    return cases


def pool_cases(gen):
    """Every case pools the same x (stored once, in the file's "x")."""
    cases = []
    x = rand(gen, 2, 3, 7, 9)
    pool_cases.x = x
    avg = [
        # kernel, stride, padding, ceil_mode, count_include_pad
        ((2, 2), None, (0, 0), False, True),
        ((3, 3), (2, 2), (1, 1), True, False),
        ((3, 2), (2, 3), (1, 1), True, True),
        ((3, 3), (2, 2), (1, 0), False, False),
    ]
    for k, s, p, ceil, cip in avg:
        fn = lambda x: F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=cip)
        y, gy, (gx,) = run(fn, [x], gen)
        cases.append({"op": "avg_pool2d", "kernel": list(k), "stride": list(s) if s else [0, 0], "padding": list(p),
                      "ceil_mode": ceil, "count_include_pad": cip, "y": t(y), "gy": t(gy), "grad_x": t(gx)})
    for size in [(3, 4), (1, 1), (5, 2)]:
        fn = lambda x: F.adaptive_avg_pool2d(x, size)
        y, gy, (gx,) = run(fn, [x], gen)
        cases.append({"op": "adaptive_avg_pool2d", "output_size": list(size), "y": t(y), "gy": t(gy),
                      "grad_x": t(gx)})
    return cases


def layer_norm2d_cases(gen):
    ln = timm.layers.LayerNorm2d(5)  # eps 1e-6
    with torch.no_grad():
        ln.weight.copy_(torch.rand(5, generator=gen) + 0.5)
        ln.bias.copy_(torch.rand(5, generator=gen) - 0.5)
    x = (torch.rand(2, 5, 4, 7, generator=gen) * 4 - 1).requires_grad_()
    y = ln(x)
    gy = torch.rand(y.shape, generator=gen) * 2 - 1
    gx, gw, gb = torch.autograd.grad(y, [x, ln.weight, ln.bias], gy)
    return [{"eps": ln.eps, "x": t(x), "weight": t(ln.weight), "bias": t(ln.bias), "y": t(y), "gy": t(gy),
             "grad_x": t(gx), "grad_weight": t(gw), "grad_bias": t(gb)}]


def main():
    gen = torch.Generator().manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "timm": timm.__version__}
    for name, cases in [("conv2d.json", conv_cases(gen)), ("pool.json", pool_cases(gen)),
                        ("layer_norm2d.json", layer_norm2d_cases(gen))]:
        path = OUT / name
        doc = {"versions": meta, "cases": cases}
        if name == "pool.json":
            doc["x"] = t(pool_cases.x)
        path.write_text(json.dumps(doc, separators=(",", ":")))
        print(f"wrote {path} ({path.stat().st_size} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
