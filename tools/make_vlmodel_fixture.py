#!/usr/bin/env python3
"""Reference values for mamclip's MAM-CLIP VLModel, its loss and the
fine-tuned classifier (include/mamclip/models/clip/{vlmodel,classifier}.hpp).

The model is built in PyTorch with the module tree and names of the reference
(igulluk/MAM-CLIP train/files/model.py `VLModel`, nnblocks.py `Transformer`,
train/mam_clip_load.ipynb for the fine-tuned model), at a tiny size:
  vision_encoder  timm.models.convnext.ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 12, 16, 24)),
                  head.fc replaced by nn.Linear(24, 24)
  text_encoder    transformers BertModel (with its pooler): 2 layers, hidden 24, 4 heads,
                  FFN 48, vocab 100, 40 positions
  embed_dim = width = 24, context_length 12, mlm vocab 120, fusion 1 layer 4 heads
Dropout is off by configuration (BERT's hidden / attention dropout p = 0, timm's
drop_rate and drop_path_rate 0), so train mode (used throughout) is deterministic.
Every parameter is drawn at random (not the reference's init, whose layer scale
1e-6 and zero img_special_token would hide parts of the model from the checks).

The reference computes in float64 from the float32 values that are stored.

Written to tests/fixtures/vlmodel/:
  vlmodel.ckpt      a Lightning-style torch.save: {"state_dict": {"VLModel." + key: float32},
                    "hyper_parameters": {...}, "epoch": 0, "global_step": 0, ...}
  reference.safetensors
    images.{0,1,2} [2, 3, 48, 32], input_ids.{0,1,2} / labels.{0,1,2} int64 [2, 12]: three
                   fixed batches (fixed masking: [CLS] 2 first, [SEP] 3 last, [PAD] 0 after;
                   masked positions hold 4 in input_ids and the original token in labels,
                   labels are 0 elsewhere except [CLS] and [SEP], as the reference's label string)
    loss.{total,contrastive,mlm} []   batch 0, mlm_coeff 0.5
    image_features, text_features [2, 24], mlm_log_probs [2, 12, 120] of batch 0
    grad.<key>      d total / d every parameter that gets a gradient (positional_embedding,
                    ln_final.* and text_encoder.pooler.* get none: torch leaves them None)
    adamw.{total,contrastive,mlm} [21]  losses of 20 torch.optim.AdamW steps (lr 1e-3, betas
                    (0.9, 0.999), eps 1e-8, weight_decay 1e-6) on batch k % 3 at step k, then
                    the loss after the last step (batch 20 % 3)
    metadata "keys": the VLModel state-dict keys in order
  classifier.pth    torch.save(state_dict) of the fine-tuned model as the reference's notebook
                    builds it: timm ConvNeXt (same tiny arch) with head.fc = Linear(24, 24),
                    birads_layer = Sequential(Linear(24, 5)), density_layer = Sequential(Linear(24, 4))
  classifier.safetensors  image [2, 3, 48, 32], birads_logits [2, 5], density_logits [2, 4]
                    (the heads applied to head.fc's output, in float64)

    /tmp/venv/bin/python tools/make_vlmodel_fixture.py

The tensors are the same on every run; safetensors may order the metadata entries differently.

Versions (tools/requirements.txt): torch 2.15.0, transformers 4.57.6, timm 1.0.31, safetensors 0.8.0.
"""
import json
import math
import pathlib
from collections import OrderedDict

import timm
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from timm.models.convnext import ConvNeXt
from torch import nn
from transformers import BertConfig, BertModel

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "vlmodel"
DEPTHS, DIMS = (1, 1, 2, 1), (8, 12, 16, 24)
WIDTH = EMBED = 24
CONTEXT, MLM_VOCAB, VOCAB = 12, 120, 100
FUSION_LAYERS, FUSION_HEADS = 1, 4
N, H, W = 2, 48, 32
CLS, SEP, PAD, MASK = 2, 3, 0, 4
STEPS = 20


class ResidualAttentionBlock(nn.Module):
    # nnblocks.py's block: attn registered before ln_1; pre-norm; no mask.
    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, width * 4), gelu=nn.GELU(),
                                             c_proj=nn.Linear(width * 4, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


def tiny_convnext():
    m = ConvNeXt(depths=DEPTHS, dims=DIMS, num_classes=1000)
    m.head.fc = nn.Linear(m.head.fc.in_features, EMBED)
    return m


class VLModel(nn.Module):
    """The reference's attribute order: vision_encoder, text_encoder, positional_embedding, ln_final,
    text_projection, mlm_projection, softmax, logit_scale, img_special_token, fusion_module, attn_mask."""

    def __init__(self):
        super().__init__()
        self.vision_encoder = tiny_convnext()
        self.cls_id = CLS
        cfg = BertConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=48, max_position_embeddings=40, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, attn_implementation="eager")
        self.text_encoder = BertModel(cfg)
        self.positional_embedding = nn.Parameter(torch.empty(CONTEXT, WIDTH))
        self.ln_final = nn.LayerNorm(WIDTH)
        self.text_projection = nn.Parameter(torch.empty(WIDTH, EMBED))
        self.mlm_projection = nn.Parameter(torch.empty(WIDTH, MLM_VOCAB))
        self.softmax = nn.LogSoftmax(dim=-1)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.img_special_token = nn.Parameter(torch.zeros(1, 1, EMBED))
        self.fusion_module = Transformer(WIDTH, FUSION_LAYERS, FUSION_HEADS)
        mask = torch.empty(CONTEXT, CONTEXT).fill_(float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, images, input_ids):
        image_features = F.normalize(self.vision_encoder(images), dim=-1)
        x = self.text_encoder(input_ids=input_ids)["last_hidden_state"]
        pos = torch.nonzero(input_ids == self.cls_id)
        text_features = x[torch.arange(x.shape[0]), pos[:, 1]] @ self.text_projection
        text_features = F.normalize(text_features, dim=-1)
        y = torch.cat([x, self.img_special_token.expand(x.shape[0], -1, -1), image_features[:, None]], dim=1)
        y = self.fusion_module(y.permute(1, 0, 2)).permute(1, 0, 2)[:, :-2, :]
        return image_features, text_features, self.logit_scale.exp(), self.softmax(y @ self.mlm_projection)


def losses(model, images, input_ids, labels):
    img, txt, scale, log_probs = model(images, input_ids)
    logits = scale * img @ txt.T
    target = torch.arange(img.shape[0])
    contrastive = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    mlm = F.nll_loss(log_probs.transpose(1, 2), labels, ignore_index=0)
    return contrastive + 0.5 * mlm, contrastive, mlm, (img, txt, log_probs)


def randomise(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                continue
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * p[0].numel() ** -0.5)
            elif name.endswith("gamma"):
                p.copy_(0.5 + 0.3 * torch.randn(p.shape, generator=gen))
            elif "norm" in name.lower() or "ln_" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def make_batch(gen):
    images = torch.rand(N, 3, H, W, generator=gen)
    input_ids = torch.zeros(N, CONTEXT, dtype=torch.long)
    labels = torch.zeros(N, CONTEXT, dtype=torch.long)
    for i in range(N):
        length = 7 + 2 * i  # tokens incl. [CLS] and [SEP]; the rest is padding
        words = torch.randint(5, VOCAB, (length - 2,), generator=gen)
        input_ids[i, 0], labels[i, 0] = CLS, CLS
        input_ids[i, 1:length - 1] = words
        input_ids[i, length - 1], labels[i, length - 1] = SEP, SEP
        for k in (1 + i, 3 + i):  # fixed masked positions
            labels[i, k] = input_ids[i, k]
            input_ids[i, k] = MASK
        labels[i, 5] = input_ids[i, 5]  # a kept token that still counts in the loss (the 10 % "kept" case)
    return images, input_ids, labels


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(20261128)
    model = VLModel()
    randomise(model, gen)
    model.train()
    sd = model.state_dict()
    keys = list(sd.keys())
    batches = [make_batch(gen) for _ in range(3)]

    OUT.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": "2.1.0",
        "state_dict": OrderedDict(("VLModel." + k, v.detach().clone().contiguous()) for k, v in sd.items()),
        "hyper_parameters": {"embed_dim": EMBED, "vision_model": {"depths": list(DEPTHS), "dims": list(DIMS)},
                             "text_model": {"width": WIDTH, "context_length": CONTEXT, "vocab_size": MLM_VOCAB,
                                            "fusion_layers": FUSION_LAYERS, "heads": FUSION_HEADS, "mlm": True}},
        "optimizer_states": [],
        "lr_schedulers": [],
    }
    torch.save(ckpt, OUT / "vlmodel.ckpt")

    model = model.double()
    tensors = {}
    for b, (images, input_ids, labels) in enumerate(batches):
        tensors[f"images.{b}"] = images
        tensors[f"input_ids.{b}"] = input_ids
        tensors[f"labels.{b}"] = labels

    images, input_ids, labels = batches[0]
    total, contrastive, mlm, (img, txt, log_probs) = losses(model, images.double(), input_ids, labels)
    total.backward()
    tensors["loss.total"], tensors["loss.contrastive"], tensors["loss.mlm"] = total, contrastive, mlm
    tensors["image_features"], tensors["text_features"], tensors["mlm_log_probs"] = img, txt, log_probs
    no_grad = []
    for name, p in model.named_parameters():
        if p.grad is None:
            no_grad.append(name)
        else:
            tensors[f"grad.{name}"] = p.grad
    model.zero_grad(set_to_none=True)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-6)
    curve = {"total": [], "contrastive": [], "mlm": []}
    for step in range(STEPS + 1):
        images, input_ids, labels = batches[step % 3]
        opt.zero_grad(set_to_none=True)
        total, contrastive, mlm, _ = losses(model, images.double(), input_ids, labels)
        for k, v in (("total", total), ("contrastive", contrastive), ("mlm", mlm)):
            curve[k].append(v.item())
        if step < STEPS:
            total.backward()
            opt.step()
    for k, v in curve.items():
        tensors[f"adamw.{k}"] = torch.tensor(v, dtype=torch.float64)

    out = {k: (v.detach().float() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(out, str(OUT / "reference.safetensors"),
              metadata={"keys": json.dumps(keys), "no_grad": json.dumps(no_grad), "torch": torch.__version__,
                        "transformers": transformers.__version__, "timm": timm.__version__})

    # The fine-tuned classifier, as train/mam_clip_load.ipynb builds it.
    clf = tiny_convnext()
    clf.birads_layer = nn.Sequential(nn.Linear(EMBED, 5))
    clf.density_layer = nn.Sequential(nn.Linear(EMBED, 4))
    randomise(clf, gen)
    torch.save(clf.state_dict(), OUT / "classifier.pth")
    clf = clf.double().eval()
    image = torch.rand(N, 3, H, W, generator=gen)
    with torch.no_grad():
        feats = clf(image.double())  # timm's forward ends at head.fc
        birads, density = clf.birads_layer(feats), clf.density_layer(feats)
    save_file({"image": image, "birads_logits": birads.float(), "density_logits": density.float()},
              str(OUT / "classifier.safetensors"), metadata={"keys": json.dumps(list(clf.state_dict().keys()))})

    for f in sorted(OUT.iterdir()):
        print(f"wrote {f} ({f.stat().st_size} bytes)")
    print(f"{len(keys)} keys; no gradient: {no_grad}")
    print("losses:", [float(tensors[f"loss.{k}"].detach()) for k in ("total", "contrastive", "mlm")])
    print("adamw total:", [round(x, 5) for x in curve["total"]])


if __name__ == "__main__":
    main()
