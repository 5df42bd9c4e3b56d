#!/usr/bin/env python3
"""Reference values for mamclip's ConvNeXt (include/mamclip/models/convnext/)
from timm (pinned in tools/requirements.txt).

    /tmp/venv/bin/python tools/make_convnext_fixture.py   # tests/fixtures/convnext/

Full-size ConvNeXt-T/S weights would be 110/200 MB, so the numerical checks
use a reduced-width timm ConvNeXt with the real structure (4 stages, stem,
downsampling layers, layer scale, head norm) and one block at real width;
the full-size layouts are checked by their names and shapes.

  small.safetensors          timm ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 12, 16, 20),
                             num_classes=10), random weights (every value bfloat16-
                             representable), float32, timm names
  small_fair.pth             the same weights under the original FAIR names
                             (downsample_layers.*, stages.i.j.dwconv|pwconv1|pwconv2, norm,
                             head) as {"model": state_dict}, the layout of FAIR's releases;
                             timm's checkpoint_filter_fn maps it back to small.safetensors
  small_lightning.ckpt       a Lightning-style checkpoint of a MAM-CLIP-like model:
                             state_dict holds VLModel.vision_encoder.<timm name> plus a few
                             other VLModel.* tensors; epoch, hyper_parameters, optimizer state
  small_ftune.pth            torch.save(state_dict) of the fine-tuned layout: the ConvNeXt
                             plus birads_layer = Sequential(Linear(10, 5)) and
                             density_layer = Sequential(Linear(10, 4)), in bfloat16
  expected.safetensors       x [2, 3, 68, 40] (spatial sizes that are no multiple of 32;
                             stage maps 17x10, 8x5, 4x2, 2x1), eval mode:
    feature_map [2, 20, 2, 1]  forward_features(x)
    pooled [2, 20]           forward_head(feature_map, pre_logits=True) (after head.norm)
    logits [2, 10]           forward(x)
    w_logits, w_pooled       fixed random weights of the loss
    loss [1]                 sum(logits * w_logits) + sum(pooled * w_pooled)
    grad.<name>              d loss / d every parameter;  grad_input = d loss / d x
    birads [2, 5], density [2, 4]
                             the fine-tuned heads applied to logits
  block96.safetensors        one convnext_small-width block (dim 96, as stages.0.blocks.0
                             of ConvNeXt-T/S): its weights in bfloat16 under
                             stages.0.blocks.0.*, and in float32: x [1, 96, 7, 5], y = block(x),
                             w (loss weights), grad_x, and d sum(y * w) / d every parameter,
                             the two Linear weights as row and column sums (the full
                             gradients would be 300 KB): grad.<name> or
                             grad.<name>.row_sum [out] / grad.<name>.col_sum [in]
  layouts.json               names and shapes of the state dicts timm gives convnext_tiny,
                             convnext_small (num_classes 1000 and 768), and the drop-path
                             rate of every block for drop_path_rate 0.1 (tiny) and 0.4 (small)
  image_gray.png, image_rgb.png, encode_expected.safetensors
                             two 8-bit images and what MAM-CLIP's preprocessing
                             (albumentations Resize = cv2 INTER_LINEAR to 68x40, grayscale
                             replicated to 3 channels, (x - min) / max(x - min)) and the
                             small model give: pixels.<i> [3, 68, 40], features.<i> [20],
                             output.<i> [10] (image_gray.png is already 68x40); and the same
                             with the resize done in float32 (cv2 on uint8 rounds the resized
                             pixels to integers, mamclip's float pipeline does not):
                             features_float.<i>, output_float.<i>

Deterministic: seeded, float32, one thread, eval mode.
"""

import json
import os
from collections import OrderedDict

import cv2
import numpy as np
import timm
import torch
from safetensors.torch import save_file
from timm.models.convnext import ConvNeXt, ConvNeXtBlock, checkpoint_filter_fn

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "convnext")

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

SMALL = dict(depths=(1, 1, 2, 1), dims=(8, 12, 16, 20), num_classes=10)
X_SHAPE = (2, 3, 68, 40)


def randomise(module):
    """Every parameter random and non-trivial (timm's init leaves layer scale at
    1e-6, which would hide the blocks), then rounded to bfloat16."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma":
                p.copy_(0.5 * torch.randn_like(p))
            elif p.ndim == 1 and leaf == "weight":  # LayerNorm scales
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif leaf == "bias":
                p.copy_(0.1 * torch.randn_like(p))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def to_fair(sd):
    """timm names -> the original FAIR names (the inverse of timm's checkpoint_filter_fn)."""
    out = OrderedDict()
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "stem":
            f = "downsample_layers.0." + ".".join(parts[1:])
        elif parts[0] == "stages" and parts[2] == "downsample":
            f = f"downsample_layers.{parts[1]}." + ".".join(parts[3:])
        elif parts[0] == "stages" and parts[2] == "blocks":
            rest = ".".join(parts[4:]).replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
            f = f"stages.{parts[1]}.{parts[3]}.{rest}"
        elif k.startswith("head.norm."):
            f = "norm." + parts[-1]
        elif k.startswith("head.fc."):
            f = "head." + parts[-1]
        else:
            raise KeyError(k)
        out[f] = v.clone()
    return out


def param_grads(module):
    return {name: p.grad.detach().clone() for name, p in module.named_parameters()}


def make_small(expected):
    torch.manual_seed(0)
    model = ConvNeXt(**SMALL)
    randomise(model)
    model.eval()
    sd = OrderedDict((k, v.detach().clone().contiguous()) for k, v in model.state_dict().items())
    save_file(sd, os.path.join(OUT, "small.safetensors"), metadata={"format": "pt"})

    x = torch.randn(*X_SHAPE, requires_grad=True)
    fmap = model.forward_features(x)
    pooled = model.forward_head(fmap, pre_logits=True)
    logits = model.forward_head(fmap)
    with torch.no_grad():
        assert torch.equal(logits, model(x))
    w_logits = torch.randn_like(logits)
    w_pooled = torch.randn_like(pooled)
    loss = (logits * w_logits).sum() + (pooled * w_pooled).sum()
    loss.backward()
    expected.update(x=x.detach(), feature_map=fmap.detach(), pooled=pooled.detach(), logits=logits.detach(),
                    w_logits=w_logits, w_pooled=w_pooled, loss=loss.detach().reshape(1), grad_input=x.grad.detach())
    for name, g in param_grads(model).items():
        expected["grad." + name] = g

    # FAIR names: timm's own filter must map them back to exactly these weights.
    fair = to_fair(sd)
    back = checkpoint_filter_fn(fair, model)
    assert list(back.keys()) == list(sd.keys()) and all(torch.equal(back[k], sd[k]) for k in sd)
    torch.save({"model": fair, "epoch": 299}, os.path.join(OUT, "small_fair.pth"))

    # Lightning: state_dict of a LightningModule whose VLModel holds the vision encoder.
    state = OrderedDict()
    state["VLModel.positional_embedding"] = torch.randn(4, 6)
    state["VLModel.logit_scale"] = torch.tensor(2.6592)
    for k, v in sd.items():
        state["VLModel.vision_encoder." + k] = v
    state["VLModel.text_encoder.embeddings.word_embeddings.weight"] = torch.randn(5, 6)
    state["VLModel.text_projection"] = torch.randn(6, 10)
    ckpt = {
        "epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.1.3", "state_dict": state,
        "optimizer_states": [{"state": {0: {"step": torch.tensor(120.0), "exp_avg": torch.randn(3)}},
                              "param_groups": [{"lr": 1e-4, "weight_decay": 1e-6, "params": [0]}]}],
        "lr_schedulers": [], "hyper_parameters": {"vision_model": {"name": "convnext_tiny"}, "embed_dim": 10},
    }
    torch.save(ckpt, os.path.join(OUT, "small_lightning.ckpt"))

    # Fine-tuned multi-task layout, stored in bfloat16 (every value is representable).
    torch.manual_seed(1)
    birads = torch.nn.Sequential(torch.nn.Linear(10, 5))
    density = torch.nn.Sequential(torch.nn.Linear(10, 4))
    randomise(birads)
    randomise(density)
    ft = OrderedDict(sd)
    for prefix, head in (("birads_layer.", birads), ("density_layer.", density)):
        for k, v in head.state_dict().items():
            ft[prefix + k] = v
    torch.save(OrderedDict((k, v.to(torch.bfloat16)) for k, v in ft.items()), os.path.join(OUT, "small_ftune.pth"))
    with torch.no_grad():
        expected["birads"] = birads(logits)
        expected["density"] = density(logits)
    return model


def make_block96():
    torch.manual_seed(2)
    block = ConvNeXtBlock(in_chs=96, ls_init_value=1e-6)
    randomise(block)
    x = torch.randn(1, 96, 7, 5, requires_grad=True)
    y = block(x)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    out = OrderedDict()
    for k, v in block.state_dict().items():
        out["stages.0.blocks.0." + k] = v.to(torch.bfloat16)
    out.update(x=x.detach(), y=y.detach(), w=w, grad_x=x.grad.detach())
    for name, g in param_grads(block).items():
        if name.startswith("mlp.fc") and name.endswith("weight"):
            out[f"grad.{name}.row_sum"] = g.sum(1)
            out[f"grad.{name}.col_sum"] = g.sum(0)
        else:
            out["grad." + name] = g
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "block96.safetensors"))


def layout(model):
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def drop_path_rates(model):
    rates = []
    for stage in model.stages:
        for blk in stage.blocks:
            rates.append(float(getattr(blk.drop_path, "drop_prob", 0.0)))
    return rates


def make_layouts():
    out = {}
    for name in ("convnext_tiny", "convnext_small"):
        out[name] = layout(timm.create_model(name, pretrained=False))
        out[name + "@768"] = layout(timm.create_model(name, pretrained=False, num_classes=768))
    out["drop_path_rates"] = {
        "convnext_tiny@0.1": drop_path_rates(timm.create_model("convnext_tiny", drop_path_rate=0.1)),
        "convnext_small@0.4": drop_path_rates(timm.create_model("convnext_small", drop_path_rate=0.4)),
    }
    with open(os.path.join(OUT, "layouts.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


def mamclip_preprocess(img, height, width, in_float=False):
    """MAM-CLIP's validation pipeline (train/files/dataset.py): Resize, CHW, 3 channels, min-max."""
    if in_float:
        img = img.astype(np.float32)
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    img = np.transpose(img, (2, 0, 1)) if img.ndim == 3 else np.repeat(img[np.newaxis], 3, axis=0)
    img = img.astype(np.float32)
    img = img - img.min()
    return torch.from_numpy(img / img.max())


def make_encode(model):
    rng = np.random.default_rng(3)
    h, w = X_SHAPE[2], X_SHAPE[3]
    yy, xx = np.mgrid[0:h, 0:w]
    gray = np.clip(60 + 2 * yy + xx + rng.integers(0, 40, (h, w)), 0, 255).astype(np.uint8)
    rgb = rng.integers(20, 230, (51, 37, 3)).astype(np.uint8)
    # cv2 writes BGR; MAM-CLIP reads with PIL (RGB), so flip to store these RGB values.
    cv2.imwrite(os.path.join(OUT, "image_gray.png"), gray)
    cv2.imwrite(os.path.join(OUT, "image_rgb.png"), rgb[:, :, ::-1])
    out = OrderedDict()
    for i, img in enumerate((gray, rgb)):
        for suffix, in_float in (("", False), ("_float", True)):
            px = mamclip_preprocess(img, h, w, in_float)
            with torch.no_grad():
                fmap = model.forward_features(px[None])
                if not in_float:
                    out[f"pixels.{i}"] = px
                out[f"features{suffix}.{i}"] = model.forward_head(fmap, pre_logits=True)[0]
                out[f"output{suffix}.{i}"] = model.forward_head(fmap)[0]
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "encode_expected.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = OrderedDict()
    model = make_small(expected)
    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(OUT, "expected.safetensors"))
    make_block96()
    make_layouts()
    make_encode(model)
    print(f"timm {timm.__version__}, torch {torch.__version__}: wrote")
    for f in sorted(os.listdir(OUT)):
        print(f"  tests/fixtures/convnext/{f}  {os.path.getsize(os.path.join(OUT, f))} bytes")


if __name__ == "__main__":
    main()
