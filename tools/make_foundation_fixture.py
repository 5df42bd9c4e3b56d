#!/usr/bin/env python3
"""Generate tests/fixtures/foundation.json: PyTorch reference values for mamclip.

Deterministic: torch.manual_seed(0), float32 model, deterministic algorithms,
single thread, CPU only.  Re-running with the pinned torch (tools/requirements.txt)
reproduces the file byte for byte.

Tensor encoding: {"shape": [...], "data": [flat row-major list]}.  Float data are
written with Python's shortest round-trip repr of the exact float32 / float64
value, so parsing as double and (for float32 tensors) casting to float gives the
exact PyTorch value.  Integer tensors use the same layout with ints.

Top-level sections:
  model     - attention block + MLP head forward/backward on a fixed batch (float32)
  adamw     - 20 AdamW steps + HF cosine-with-warmup LambdaLR + grad clipping
  losses    - cross_entropy / mse_loss values and gradients (float64)
  pointwise - gelu / gelu-tanh / derivatives / sigmoid / tanh / logsumexp (float64)
"""

import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "foundation.json")

# ---------------------------------------------------------------- determinism
torch.manual_seed(0)
torch.set_num_threads(1)
torch.set_num_interop_threads(1)
torch.use_deterministic_algorithms(True)
torch.set_default_dtype(torch.float32)

# ---------------------------------------------------------------- config
B, L, E, H = 3, 7, 10, 2
HD = E // H  # 5
N = B * L  # 21
HIDDEN = 13
CLASSES = 5
LN_EPS = 1e-5
IGNORE = -100

PARAM_NAMES = [
    "attn.q_proj.weight", "attn.q_proj.bias",
    "attn.k_proj.weight", "attn.k_proj.bias",
    "attn.v_proj.weight", "attn.v_proj.bias",
    "attn.out_proj.weight", "attn.out_proj.bias",
    "mlp.fc1.weight", "mlp.fc1.bias",
    "mlp.norm.weight", "mlp.norm.bias",
    "mlp.fc2.weight", "mlp.fc2.bias",
]


def enc(t):
    """Encode a tensor as {"shape", "data"} with exact values."""
    t = t.detach().cpu().contiguous()
    shape = list(t.shape)
    if t.dtype in (torch.int64, torch.int32, torch.bool, torch.uint8):
        data = [int(v) for v in t.reshape(-1).tolist()]
    else:
        data = [float(v) for v in t.reshape(-1).tolist()]
        assert all(math.isfinite(v) for v in data), "non-finite value in fixture"
    return {"shape": shape, "data": data}


def scalar(t):
    v = float(t.detach())
    assert math.isfinite(v)
    return v


# ---------------------------------------------------------------- parameters
def make_params():
    """Default nn.Linear / nn.LayerNorm init (then LayerNorm affine randomised)."""
    p = {}
    for name, fin, fout in [("attn.q_proj", E, E), ("attn.k_proj", E, E),
                            ("attn.v_proj", E, E), ("attn.out_proj", E, E),
                            ("mlp.fc1", E, HIDDEN)]:
        lin = nn.Linear(fin, fout)
        p[name + ".weight"] = lin.weight.detach().clone()
        p[name + ".bias"] = lin.bias.detach().clone()
    ln = nn.LayerNorm(HIDDEN, eps=LN_EPS)  # weight=1, bias=0 by default
    p["mlp.norm.weight"] = (ln.weight.detach() + 0.1 * torch.randn(HIDDEN)).clone()
    p["mlp.norm.bias"] = (ln.bias.detach() + 0.1 * torch.randn(HIDDEN)).clone()
    lin = nn.Linear(HIDDEN, CLASSES)
    p["mlp.fc2.weight"] = lin.weight.detach().clone()
    p["mlp.fc2.bias"] = lin.bias.detach().clone()
    assert list(p.keys()) == sorted(p.keys(), key=PARAM_NAMES.index)
    return p


def linear(x, p, name):
    # PyTorch layout: weight [out, in]; y = x @ W^T + b
    return x @ p[name + ".weight"].t() + p[name + ".bias"]


def forward(p, x, key_pad_mask, targets):
    """Explicit math, op by op (mirrored by the C++ side)."""
    q = linear(x, p, "attn.q_proj")  # [B,L,E]
    k = linear(x, p, "attn.k_proj")
    v = linear(x, p, "attn.v_proj")
    q = q.reshape(B, L, H, HD).permute(0, 2, 1, 3)  # [B,H,L,HD]
    k = k.reshape(B, L, H, HD).permute(0, 2, 1, 3)
    v = v.reshape(B, L, H, HD).permute(0, 2, 1, 3)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(HD))  # [B,H,L,L]
    scores = scores.masked_fill(key_pad_mask[:, None, None, :], float("-inf"))
    attn = torch.softmax(scores, dim=-1)
    o = attn @ v  # [B,H,L,HD]
    o = o.permute(0, 2, 1, 3).reshape(B, L, E)
    y = x + linear(o, p, "attn.out_proj")

    h = y.reshape(N, E)
    h = linear(h, p, "mlp.fc1")
    h = F.layer_norm(h, (HIDDEN,), p["mlp.norm.weight"], p["mlp.norm.bias"], eps=LN_EPS)
    h = F.gelu(h, approximate="none")
    h = linear(h, p, "mlp.fc2")
    logp = F.log_softmax(h, dim=-1)
    loss = F.nll_loss(logp, targets, ignore_index=IGNORE, reduction="mean")
    return logp, loss


# ---------------------------------------------------------------- A. model
init = make_params()
x0 = torch.randn(B, L, E)
targets = torch.randint(0, CLASSES, (N,), dtype=torch.int64)
targets[4] = IGNORE
key_pad_mask = torch.zeros(B, L, dtype=torch.bool)
key_pad_mask[1, L - 2:] = True  # batch item 1: last 2 keys masked

params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
x = x0.clone().requires_grad_(True)
logp, loss = forward(params, x, key_pad_mask, targets)
loss.backward()

model = {
    "config": {
        "batch": B, "seq_len": L, "embed_dim": E, "num_heads": H, "head_dim": HD,
        "hidden": HIDDEN, "num_classes": CLASSES, "layer_norm_eps": LN_EPS,
        "ignore_index": IGNORE, "attn_scale": 1.0 / math.sqrt(HD),
        "gelu": "erf", "dtype": "float32",
        "key_padding_mask_note": "1 = key masked (scores filled with -inf before softmax)",
    },
    "inputs": {
        "x": enc(x0),
        "targets": enc(targets),
        "key_padding_mask": enc(key_pad_mask.to(torch.int64)),
    },
    "params": {k: enc(v) for k, v in init.items()},
    "logp": enc(logp),
    "loss": scalar(loss),
    "grads": {k: enc(params[k].grad) for k in PARAM_NAMES},
    "grad_x": enc(x.grad),
}

# ---------------------------------------------------------------- B. AdamW
LR, BETAS, ADAM_EPS, WD = 1e-2, (0.9, 0.999), 1e-8, 0.05
WARMUP, TOTAL = 4, 20
MAX_NORM = 0.5


def lr_lambda(s):
    # HF transformers get_cosine_schedule_with_warmup (num_cycles=0.5)
    if s < WARMUP:
        return float(s) / float(max(1, WARMUP))
    progress = float(s - WARMUP) / float(max(1, TOTAL - WARMUP))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def run_adamw(max_norm):
    ps = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    plist = [ps[k] for k in PARAM_NAMES]
    opt = torch.optim.AdamW(plist, lr=LR, betas=BETAS, eps=ADAM_EPS, weight_decay=WD,
                            amsgrad=False, foreach=False, maximize=False, capturable=False,
                            differentiable=False, fused=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    losses, norms, lrs = [], [], []
    for _ in range(TOTAL):
        opt.zero_grad(set_to_none=True)
        _, l = forward(ps, x0, key_pad_mask, targets)
        l.backward()
        n = torch.nn.utils.clip_grad_norm_(plist, max_norm=max_norm, norm_type=2.0,
                                           error_if_nonfinite=True, foreach=False)
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
        losses.append(scalar(l))
        norms.append(scalar(n))
    return ps, losses, norms, lrs


ps, losses, norms, lrs = run_adamw(MAX_NORM)
clipped = sum(1 for n in norms if n > MAX_NORM)
while clipped == 0:  # clipping must trigger on at least some steps
    MAX_NORM = MAX_NORM / 2
    ps, losses, norms, lrs = run_adamw(MAX_NORM)
    clipped = sum(1 for n in norms if n > MAX_NORM)

adamw = {
    "hyperparameters": {
        "lr": LR, "beta1": BETAS[0], "beta2": BETAS[1], "eps": ADAM_EPS,
        "weight_decay": WD, "amsgrad": False, "foreach": False,
        "max_norm": MAX_NORM, "norm_type": 2.0,
        "warmup_steps": WARMUP, "total_steps": TOTAL,
        "schedule": "cosine_with_warmup (HF): s<warmup ? s/max(1,warmup) : "
                    "max(0, 0.5*(1+cos(pi*(s-warmup)/max(1,total-warmup))))",
    },
    "notes": (
        "Starts from model.params on model.inputs (x, targets, key_padding_mask). Step i: "
        "zero_grad; loss_i = forward; backward; grad_norms[i] = clip_grad_norm_(all params, "
        "max_norm) (total L2 norm before clipping; grads scaled by min(1, max_norm/(norm+1e-6))); "
        "lrs[i] = lr used by this optimizer.step() = lr*lr_lambda(i); optimizer.step(); "
        "scheduler.step(). AdamW step t=i+1: p *= 1 - lr*wd; m = lerp(m, g, 1-beta1); "
        "v = beta2*v + (1-beta2)*g*g; p -= (lr/(1-beta1^t)) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)."
    ),
    "num_clipped_steps": clipped,
    "losses": losses,
    "grad_norms": norms,
    "lrs": lrs,
    "params_after": {k: enc(ps[k]) for k in PARAM_NAMES},
}

# ---------------------------------------------------------------- C. losses (float64)
logits = torch.randn(9, 6, dtype=torch.float64)
ce_targets = torch.randint(0, 6, (9,), dtype=torch.int64)
ce_targets[2] = IGNORE
ce_targets[7] = IGNORE

cross_entropy = []
for ls in (0.0, 0.1):
    for red in ("mean", "sum", "none"):
        lg = logits.clone().requires_grad_(True)
        out = F.cross_entropy(lg, ce_targets, ignore_index=IGNORE, reduction=red, label_smoothing=ls)
        (out.sum() if red == "none" else out).backward()
        cross_entropy.append({
            "label_smoothing": ls,
            "reduction": red,
            "value": enc(out) if red == "none" else scalar(out),
            "grad_logits": enc(lg.grad),
        })

mse_a = torch.randn(4, 5, dtype=torch.float64)
mse_b = torch.randn(4, 5, dtype=torch.float64)
a = mse_a.clone().requires_grad_(True)
b = mse_b.clone().requires_grad_(True)
mse_out = F.mse_loss(a, b, reduction="mean")
mse_out.backward()

losses_sec = {
    "dtype": "float64",
    "ignore_index": IGNORE,
    "logits": enc(logits),
    "targets": enc(ce_targets),
    "cross_entropy": cross_entropy,
    "cross_entropy_note": "for reduction 'none', value has shape [9] (0 at ignored rows) and "
                          "grad_logits is the gradient of value.sum()",
    "mse": {
        "reduction": "mean",
        "input": enc(mse_a),
        "target": enc(mse_b),
        "value": scalar(mse_out),
        "grad_input": enc(a.grad),
        "grad_target": enc(b.grad),
    },
}

# ---------------------------------------------------------------- D. pointwise (float64)
xs = torch.linspace(-4.0, 4.0, 11, dtype=torch.float64) + 0.6 * (torch.rand(11, dtype=torch.float64) - 0.5)
xs = xs.clamp(-4.0, 4.0)

xg = xs.clone().requires_grad_(True)
g_erf = F.gelu(xg, approximate="none")
(d_erf,) = torch.autograd.grad(g_erf.sum(), xg)
xt = xs.clone().requires_grad_(True)
g_tanh = F.gelu(xt, approximate="tanh")
(d_tanh,) = torch.autograd.grad(g_tanh.sum(), xt)

lse_in = 4.0 * torch.randn(3, 11, dtype=torch.float64)
lse_in[2] += 100.0  # large-offset row: checks the max-subtraction stable form

pointwise = {
    "dtype": "float64",
    "x": enc(xs),
    "gelu": enc(g_erf),
    "gelu_grad": enc(d_erf),
    "gelu_tanh": enc(g_tanh),
    "gelu_tanh_grad": enc(d_tanh),
    "sigmoid": enc(torch.sigmoid(xs)),
    "tanh": enc(torch.tanh(xs)),
    "logsumexp_input": enc(lse_in),
    "logsumexp_dim1": enc(torch.logsumexp(lse_in, dim=1)),
}

# ---------------------------------------------------------------- write
doc = {
    "generator": "tools/make_foundation_fixture.py",
    "torch_version": torch.__version__,
    "seed": 0,
    "model": model,
    "adamw": adamw,
    "losses": losses_sec,
    "pointwise": pointwise,
}

text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
os.makedirs(os.path.dirname(OUT), exist_ok=True)
with open(OUT, "w") as f:
    f.write(text)
size = len(text.encode())
print(f"wrote {os.path.normpath(OUT)} ({size} bytes); loss={model['loss']:.6f}; "
      f"max_norm={MAX_NORM}; clipped {clipped}/{TOTAL} steps")
if size >= 300 * 1024:
    sys.exit("fixture too large")
