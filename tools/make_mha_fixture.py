#!/usr/bin/env python3
"""Reference values for mamclip's nn::MultiheadAttention
(include/mamclip/nn/attention.hpp) from torch.nn.MultiheadAttention
(torch pinned in tools/requirements.txt).

    /tmp/venv/bin/python tools/make_mha_fixture.py   # tests/fixtures/attention/mha.safetensors

Parameters and inputs are drawn in float32; the reference runs in float64 on
those exact values, so the C++ float32 result is compared with an (almost)
exact answer. Stored tensors, all float32 except the masks (bool):

  e{E}h{H}.{in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias}   one module per (E, H)
  {case}.{query, key, value}            inputs (key / value absent when they are the query / key tensor)
  {case}.{key_padding_mask, attn_mask}  true = ignore / not allowed (PyTorch's meaning)
  {case}.attn_bias                      float additive mask
  {case}.{out, weights}                 outputs (weights only with need_weights)
  {case}.{grad_out, grad_weights}       the cotangents: loss = sum(out * grad_out) + sum(weights * grad_weights)
  {case}.grad.{query, key, value, in_proj_weight, ...}  d loss / d input and parameter

Every query row sees at least one key (torch gives NaN otherwise).
The case list (its flags) is in the safetensors metadata under "cases".
"""
import json
import pathlib

import torch
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "attention" / "mha.safetensors"
PARAMS = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]


def module(gen, e, h, batch_first):
    mha = torch.nn.MultiheadAttention(e, h, batch_first=batch_first)
    with torch.no_grad():
        for name, p in mha.named_parameters():
            # Non-zero biases, so that a bias bug cannot hide behind PyTorch's zero init.
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if "bias" in name else 1.0 / e**0.5))
    return mha.double()


def main():
    gen = torch.Generator().manual_seed(20250611)
    tensors, cases = {}, []
    mods = {}
    for e, h in [(24, 3), (32, 8)]:
        m = module(gen, e, h, False)
        mods[(e, h)] = m
        for name, p in m.named_parameters():
            tensors[f"e{e}h{h}.{name}"] = p.detach().float()

    def run(name, e, h, lq, s, n, batch_first, kind, kpm=None, attn_mask=None, attn_bias=None, causal=False,
            need_weights=False, average=True):
        m = mods[(e, h)]
        m.batch_first = batch_first
        m.zero_grad()

        def rnd(*shape):
            return torch.randn(*shape, generator=gen).double().requires_grad_(True)

        qshape = (n, lq, e) if batch_first else (lq, n, e)
        kshape = (n, s, e) if batch_first else (s, n, e)
        query = rnd(*qshape)
        if kind == "self":
            key = value = query
        elif kind == "kv":
            key = rnd(*kshape)
            value = key
        else:
            key, value = rnd(*kshape), rnd(*kshape)
        mask = None
        if attn_bias is not None:
            mask = attn_bias.double()
        if attn_mask is not None:
            mask = attn_mask if mask is None else mask.masked_fill(attn_mask, float("-inf"))
        if causal:
            c = torch.ones(lq, s, dtype=torch.bool).triu(1)
            mask = c if mask is None else (mask | c if mask.dtype == torch.bool else mask.masked_fill(c, float("-inf")))
        out, weights = m(query, key, value, key_padding_mask=kpm, attn_mask=mask, need_weights=need_weights,
                         average_attn_weights=average)
        grad_out = torch.randn(out.shape, generator=gen).double()
        loss = (out * grad_out).sum()
        if need_weights:
            grad_weights = torch.randn(weights.shape, generator=gen).double()
            loss = loss + (weights * grad_weights).sum()
        inputs = {"query": query}
        if kind != "self":
            inputs["key"] = key
        if kind == "cross":
            inputs["value"] = value
        loss.backward()
        for k, t in inputs.items():
            tensors[f"{name}.{k}"] = t.detach().float()
            tensors[f"{name}.grad.{k}"] = t.grad.float()
        for pname, p in m.named_parameters():
            tensors[f"{name}.grad.{pname}"] = p.grad.float()
        tensors[f"{name}.out"] = out.detach().float()
        tensors[f"{name}.grad_out"] = grad_out.float()
        if need_weights:
            assert torch.isfinite(weights).all()
            tensors[f"{name}.weights"] = weights.detach().float()
            tensors[f"{name}.grad_weights"] = grad_weights.float()
        if kpm is not None:
            tensors[f"{name}.key_padding_mask"] = kpm.clone()
        if attn_mask is not None:
            tensors[f"{name}.attn_mask"] = attn_mask.clone()
        if attn_bias is not None:
            tensors[f"{name}.attn_bias"] = attn_bias.float()
        assert torch.isfinite(out).all()
        cases.append({"name": name, "module": f"e{e}h{h}", "heads": h, "batch_first": batch_first, "kind": kind,
                      "causal": causal, "need_weights": need_weights, "average_attn_weights": average})

    L, S, N = 5, 7, 2
    kpm_s = torch.tensor([[0, 0, 1, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    kpm_l = torch.tensor([[0, 1, 0, 0, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    am = torch.rand(L, S, generator=gen) < 0.3
    am[:, 0] = False  # every row keeps key 0
    run("self_seq", 24, 3, L, L, N, False, "self")
    run("self_seq_kpm_weights", 24, 3, L, L, N, False, "self", kpm=kpm_l, need_weights=True)
    run("cross_bf_kpm", 32, 8, L, S, N, True, "cross", kpm=kpm_s)
    run("kv_seq_mask_weights", 24, 3, L, S, N, False, "kv", kpm=kpm_s, attn_mask=am, need_weights=True, average=False)
    run("self_bf_bias", 24, 3, L, L, N, True, "self", attn_bias=torch.randn(L, L, generator=gen))
    run("self_bf_kpm_causal", 24, 3, L, L, N, True, "self", kpm=kpm_l, causal=True)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(OUT), metadata={"cases": json.dumps(cases), "torch": torch.__version__})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(tensors)} tensors, {len(cases)} cases)")


if __name__ == "__main__":
    main()
