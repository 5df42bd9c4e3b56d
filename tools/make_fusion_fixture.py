#!/usr/bin/env python3
"""Reference values for mamclip's MAM-CLIP fusion transformer
(include/mamclip/models/clip/fusion.hpp), built in PyTorch with the module
tree of the reference (igulluk/MAM-CLIP train/files/nnblocks.py: Transformer ->
resblocks[i] -> attn (nn.MultiheadAttention), ln_1, mlp (c_fc, gelu, c_proj),
ln_2; pre-norm residual blocks; sequence-first) and its MLM branch
(train/files/model.py VLModel.encode_text: [text ; img_special_token ; image]
-> fusion -> drop the last two positions -> log_softmax(x @ mlm_projection)),
at a small size: width 20, 4 heads (head dim 5), 2 layers, MLP ratio 4.

    /tmp/venv/bin/python tools/make_fusion_fixture.py   # tests/fixtures/clip/fusion.safetensors

Stored (float32; the reference runs in float64 on the float32 values):
  fusion_module.<name>    every parameter, the reference's state-dict names
  text_hidden [N, T, W], image_features [N, W] (L2-normalised, as the reference
  feeds them), img_special_token [1, 1, W], mlm_projection [W, V]
  fusion_out [T + 2, N, W]   the transformer's output (sequence-first)
  log_probs [N, T, V]        the MLM log-probabilities
  grad_log_probs [N, T, V]   the cotangent: loss = sum(log_probs * grad_log_probs)
  grad.<name>                d loss / d every parameter and input above
The metadata "keys" lists the fusion state-dict keys in the reference's order.
"""
import json
import pathlib
from collections import OrderedDict

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "clip" / "fusion.safetensors"
WIDTH, HEADS, LAYERS, MLP_RATIO = 20, 4, 2, 4.0
N, T, V = 2, 5, 11


class Block(nn.Module):
    # Registration order as in the reference: attn, ln_1, mlp, ln_2.
    def __init__(self, width, heads, mlp_ratio):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, hidden), gelu=nn.GELU(),
                                             c_proj=nn.Linear(hidden, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Fusion(nn.Module):
    def __init__(self):
        super().__init__()
        self.resblocks = nn.ModuleList([Block(WIDTH, HEADS, MLP_RATIO) for _ in range(LAYERS)])

    def forward(self, x):
        for block in self.resblocks:
            x = block(x)
        return x


def main():
    gen = torch.Generator().manual_seed(20250612)
    fusion = Fusion()
    with torch.no_grad():
        for name, p in fusion.named_parameters():
            if "ln_" in name:  # near the identity, but not exactly, so the affine terms are tested
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1] if p.dim() == 2 else WIDTH
                p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.dim() == 1 else fan_in**-0.5))
    fusion = fusion.double()

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).float().double().requires_grad_(True)

    text_hidden = rnd(N, T, WIDTH)
    image_raw = torch.randn(N, WIDTH, generator=gen)
    image_features = F.normalize(image_raw, dim=-1).float().double().requires_grad_(True)
    img_special_token = rnd(1, 1, WIDTH, scale=0.5)  # zeros at init in the reference; random to test its gradient
    mlm_projection = rnd(WIDTH, V, scale=WIDTH**-0.5)

    x = torch.cat([text_hidden, img_special_token.expand(N, -1, -1), image_features.unsqueeze(1)], dim=1)
    fusion_out = fusion(x.permute(1, 0, 2))
    fusion_out.retain_grad()
    y = fusion_out.permute(1, 0, 2)[:, :-2, :]
    log_probs = torch.log_softmax(y @ mlm_projection, dim=-1)
    grad_log_probs = torch.randn(log_probs.shape, generator=gen).double()
    (log_probs * grad_log_probs).sum().backward()

    tensors = {}
    for name, p in fusion.named_parameters():
        tensors[f"fusion_module.{name}"] = p.detach().float()
        tensors[f"grad.fusion_module.{name}"] = p.grad.float()
    for name, t in [("text_hidden", text_hidden), ("image_features", image_features),
                    ("img_special_token", img_special_token), ("mlm_projection", mlm_projection)]:
        tensors[name] = t.detach().float()
        tensors[f"grad.{name}"] = t.grad.float()
    tensors["fusion_out"] = fusion_out.detach().float()
    tensors["log_probs"] = log_probs.detach().float()
    tensors["grad_log_probs"] = grad_log_probs.float()
    keys = list(fusion.state_dict().keys())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT),
              metadata={"keys": json.dumps(keys), "torch": torch.__version__})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(tensors)} tensors)")
    print("keys:", keys[:12])


if __name__ == "__main__":
    main()
