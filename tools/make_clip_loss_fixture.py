#!/usr/bin/env python3
"""Reference values for mamclip's clip_loss (include/mamclip/ops/loss/clip.hpp)
from open_clip's ClipLoss formula written out with torch (pinned in
tools/requirements.txt):

    logits = exp(logit_scale) * I @ T.T
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    /tmp/venv/bin/python tools/make_clip_loss_fixture.py   # tests/fixtures/clip_loss/clip_loss.json

Features are not stored: both sides make them from an integer hash (below,
repeated in tests/ops/test_clip_loss.cpp), L2-normalise the rows in float64
and round to float32. Torch computes in float64 from those float32 values.
Each case stores batch B (D = 16), logit_scale (log of the scale),
max_logit_scale (or null), loss and d_logit_scale, and for the gradients
d_image_features / d_text_features: the full [B, D] tensor when B <= 64, else
the rows listed in "rows" plus two sums over all entries, sum(grad * w) with
w[i, k] = hash_unit(i, k, 99) and sum(|grad|), which keep the fixture small.
"""
import json
import math
import pathlib

import torch
import torch.nn.functional as F

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "clip_loss" / "clip_loss.json"
DIM = 16


def hash_unit(i, k, seed):
    """A value in [-0.5, 0.5) from (row, column, seed) with 32-bit integer arithmetic only."""
    h = ((i * 1000003 + k * 7919 + seed * 104729) * 2654435761) % (1 << 32)
    h ^= h >> 15
    h = (h * 2246822519) % (1 << 32)
    h ^= h >> 13
    return h / float(1 << 32) - 0.5


def features(b, seed):
    x = torch.tensor([[hash_unit(i, k, seed) for k in range(DIM)] for i in range(b)], dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    return x.to(torch.float32).to(torch.float64)


def as_json(t):
    return {"shape": list(t.shape), "data": [float(x) for x in t.detach().reshape(-1).tolist()]}


def case(b, logit_scale, max_logit_scale=None):
    img = features(b, 1).requires_grad_()
    txt = features(b, 2).requires_grad_()
    ls = torch.tensor([logit_scale], dtype=torch.float32).to(torch.float64).requires_grad_()
    s = ls.clamp(max=max_logit_scale).exp() if max_logit_scale is not None else ls.exp()
    logits = s * img @ txt.T
    labels = torch.arange(b)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    loss.backward()
    c = {
        "batch": b,
        "logit_scale": as_json(ls),
        "max_logit_scale": max_logit_scale,
        "loss": as_json(loss),
        "d_logit_scale": as_json(ls.grad),
    }
    w = torch.tensor([[hash_unit(i, k, 99) for k in range(DIM)] for i in range(b)], dtype=torch.float64)
    rows = sorted({0, 1, 2, b // 2, b - 2, b - 1} & set(range(b)))
    for name, g in (("d_image_features", img.grad), ("d_text_features", txt.grad)):
        if b <= 64:
            c[name] = as_json(g)
        else:
            c[name] = {"rows": rows, "values": as_json(g[rows]), "weighted_sum": float((g * w).sum()),
                       "abs_sum": float(g.abs().sum())}
    return c


def main():
    cases = [case(1, math.log(1 / 0.07)), case(7, math.log(1 / 0.07)), case(64, 5.0, math.log(100.0)),
             case(64, 3.0, math.log(100.0)), case(1000, math.log(1 / 0.07))]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"torch": torch.__version__, "dim": DIM, "cases": cases}))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): batches {[c['batch'] for c in cases]}")


if __name__ == "__main__":
    main()
