"""PyTorch baseline for bench_vlmodel: one MAM-CLIP pretraining step of the
reference VLModel (the module tree of tools/make_vlmodel_fixture.py, whose
classes and loss are imported from there, at the size of VLModelConfig::small()
or ::mamclip("convnext_small")) at the same shapes and thread count, printing
lines in bench_vlmodel's format so vlmodel_vs_torch.sh can pair them.

    python benchmarks/models/vlmodel_torch.py --threads 2 --cases small:8x128x96,full:1x256x192
    python benchmarks/models/vlmodel_torch.py --device cuda --precision bf16 --cases full:8x1024x768

A step: zero_grad, forward in train mode (BERT dropout 0.1, timm drop_path 0, as
the C++ configs), (CE(s I T^T) + CE(s T I^T)) / 2 + 0.5 * NLL(MLM, ignore_index 0),
backward, torch.optim.AdamW (lr 1e-4, weight decay 1e-6). Random weights (the
modules' own init) and a random batch laid out as bench_vlmodel's. BERT runs
with transformers' default attention implementation (sdpa), as a user's would.
"""
import argparse
import contextlib
import math
import pathlib
import statistics
import sys
import time

import timm
import torch
import transformers
from timm.models.convnext import ConvNeXt
from torch import nn
from transformers import BertConfig, BertModel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))
import make_vlmodel_fixture as ref  # noqa: E402

CLS, SEP, MASK, FIRST_WORD = 2, 3, 4, 5

# The numbers of VLModelConfig::small() and ::mamclip("convnext_small") (models/clip/vlmodel.hpp).
CONFIGS = {
    "small": dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), hidden=64, layers=2, heads=4, ffn=256,
                  embed=64, fusion_heads=4, mlm_vocab=30522),
    "full": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), hidden=768, layers=12, heads=12, ffn=3072,
                 embed=768, fusion_heads=8, mlm_vocab=49408),
}
VOCAB, MAX_POSITIONS, CONTEXT, FUSION_LAYERS = 30522, 512, 100, 1


def build(name, context):
    """ref.VLModel's module tree (same attribute order) at the size of CONFIGS[name]; its
    constructor is fixed to the fixture's tiny size, so the attributes are set here."""
    c = CONFIGS[name]
    m = ref.VLModel.__new__(ref.VLModel)
    nn.Module.__init__(m)
    m.vision_encoder = ConvNeXt(depths=c["depths"], dims=c["dims"], num_classes=1000)
    m.vision_encoder.head.fc = nn.Linear(m.vision_encoder.head.fc.in_features, c["embed"])
    m.cls_id = CLS
    m.text_encoder = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=c["hidden"], num_hidden_layers=c["layers"],
                                          num_attention_heads=c["heads"], intermediate_size=c["ffn"],
                                          max_position_embeddings=MAX_POSITIONS))
    width = c["hidden"]
    m.positional_embedding = nn.Parameter(torch.empty(context, width).normal_(std=0.01))
    m.ln_final = nn.LayerNorm(width)
    m.text_projection = nn.Parameter(torch.empty(width, c["embed"]).normal_(std=width ** -0.5))
    m.mlm_projection = nn.Parameter(torch.empty(width, c["mlm_vocab"]).normal_(std=width ** -0.5))
    m.softmax = nn.LogSoftmax(dim=-1)
    m.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
    m.img_special_token = nn.Parameter(torch.zeros(1, 1, c["embed"]))
    m.fusion_module = ref.Transformer(width, FUSION_LAYERS, c["fusion_heads"])
    m.register_buffer("attn_mask", torch.empty(context, context).fill_(float("-inf")).triu_(1), persistent=False)
    return m


def random_batch(b, h, w, length):
    """bench_vlmodel's layout: row i has length - (7 i) % (length // 4 + 1) tokens ([CLS], words,
    [SEP]) then [PAD]; every 7th word is masked and kept in the labels with [CLS] and [SEP]."""
    images = torch.rand(b, 3, h, w)
    ids = torch.zeros(b, length, dtype=torch.long)
    labels = torch.zeros(b, length, dtype=torch.long)
    for i in range(b):
        used = length - (i * 7) % (length // 4 + 1)
        ids[i, 0] = labels[i, 0] = CLS
        ids[i, 1:used - 1] = torch.randint(FIRST_WORD, VOCAB, (used - 2,))
        for t in range(7, used - 1, 7):
            labels[i, t] = ids[i, t]
            ids[i, t] = MASK
        ids[i, used - 1] = labels[i, used - 1] = SEP
    return images, ids, labels


def train_step(model, opt, images, ids, labels, device, precision):
    """One step; .item() after opt.step() waits for the device, so GPU times are whole steps.
    bf16 / fp16: the forward and loss in torch.autocast, as bench_vlmodel's --precision."""
    opt.zero_grad(set_to_none=True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    region = torch.autocast(device_type=device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with region:
        total = ref.losses(model, images, ids, labels)[0]
    total.backward()
    opt.step()
    return total.item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--cases", default="small:8x128x96,full:1x256x192")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--len", type=int, default=CONTEXT)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = ap.parse_args()
    device = torch.device(args.device)
    on_cpu_fp32 = device.type == "cpu" and args.precision == "fp32"
    where = f"threads={args.threads}" if on_cpu_fp32 else f"device={args.device} precision={args.precision}"

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # The reference calls BERT without an attention mask on padded rows; so does bench_vlmodel.
    transformers.logging.set_verbosity_error()
    tag = f"pytorch {torch.__version__} timm {timm.__version__} transformers {transformers.__version__} vlmodel"
    for case in args.cases.split(","):
        name, dims = case.split(":")
        b, h, w = (int(v) for v in dims.split("x"))
        model = build(name, max(CONTEXT, args.len)).to(device)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-6)
        images, ids, labels = (t.to(device) for t in random_batch(b, h, w, args.len))
        times, first_loss = [], None
        for i in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            loss = train_step(model, opt, images, ids, labels, device, args.precision)
            s = time.perf_counter() - t0
            if not math.isfinite(loss):
                sys.exit(f"vlmodel_torch: case '{case}': step {i} gave loss {loss}")
            if i == 0:
                first_loss = loss
            if i >= args.warmup:
                times.append(s * 1e3)
        print(f"{tag} {name} batch={b} {h}x{w} len={args.len} {where}: loss {first_loss:.4f} "
              f"median {statistics.median(times):.2f} ms min {min(times):.2f} ms", flush=True)


if __name__ == "__main__":
    main()
