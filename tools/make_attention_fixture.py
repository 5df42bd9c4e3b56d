#!/usr/bin/env python3
"""Reference values for mamclip's scaled_dot_product_attention
(include/mamclip/ops/attention/) from torch.nn.functional.scaled_dot_product_attention
(torch pinned in tools/requirements.txt).

    /tmp/venv/bin/python tools/make_attention_fixture.py   # tests/fixtures/attention/sdpa.json

Each case, in float64: q [B, H, Lq, D], k [B, H, Lk, D], v [B, H, Lk, Dv],
key_padding_mask [B, Lk] (1 = attend, or null), causal, scale (or null for
1/sqrt(D)), out, grad_out (a random projection) and grad_q, grad_k, grad_v =
d sum(out * grad_out) / d q, k, v. Every query row sees at least one key
(torch gives NaN for rows that see none; mamclip gives zeros). Tensors are
{"shape": [...], "data": [...]} as tests/support/test_support.hpp reads them.
"""
import json
import pathlib

import torch
import torch.nn.functional as F

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "attention" / "sdpa.json"


def as_json(t):
    return {"shape": list(t.shape), "data": [float(x) for x in t.detach().reshape(-1).tolist()]}


def case(name, gen, b, h, lq, lk, d, dv, mask_rows=None, causal=False, scale=None):
    q = torch.randn(b, h, lq, d, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, h, lk, d, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, h, lk, dv, generator=gen, dtype=torch.float64, requires_grad=True)
    allowed = torch.ones(b, 1, lq, lk, dtype=torch.bool)
    mask = None
    if mask_rows is not None:
        mask = torch.tensor(mask_rows, dtype=torch.bool)
        allowed = allowed & mask[:, None, None, :]
    if causal:
        # torch's is_causal is tril(ones(Lq, Lk)): top-left aligned; merged into one mask here
        # because attn_mask and is_causal cannot be combined.
        allowed = allowed & torch.ones(lq, lk, dtype=torch.bool).tril()
    assert allowed.any(-1).all(), "every query row must see a key"
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), grad_out)
    return {
        "name": name,
        "q": as_json(q), "k": as_json(k), "v": as_json(v),
        "key_padding_mask": None if mask is None else as_json(mask.double()),
        "causal": causal, "scale": scale,
        "out": as_json(out), "grad_out": as_json(grad_out),
        "grad_q": as_json(gq), "grad_k": as_json(gk), "grad_v": as_json(gv),
    }


def main():
    gen = torch.Generator().manual_seed(20240607)
    cases = [
        case("padding mask, Lq != Lk", gen, 2, 1, 3, 4, 3, 2, mask_rows=[[1, 1, 0, 1], [1, 0, 0, 0]]),
        case("causal with padding, Lq < Lk (top-left)", gen, 2, 1, 3, 4, 3, 2,
             mask_rows=[[1, 0, 1, 1], [1, 1, 1, 0]], causal=True),
        case("causal, Lq > Lk, custom scale", gen, 1, 2, 4, 3, 3, 2, causal=True, scale=0.7),
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"generator": f"tools/make_attention_fixture.py, torch {torch.__version__}",
                               "cases": cases}) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
