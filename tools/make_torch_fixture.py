#!/usr/bin/env python3
"""Generate tests/fixtures/torch/: files written by torch.save (pinned in
tools/requirements.txt) that the C++ torch checkpoint reader must read.

    /tmp/venv/bin/python tools/make_torch_fixture.py

Files:
  all_dtypes.pt            a dict with one tensor per dtype mamclip loads
                           (float64 float32 float16 bfloat16 int64 int32 int16
                           int8 uint8 bool, extreme integers), a 0-dim and an
                           empty tensor, a transposed (non-contiguous) view, two
                           views of one storage at different offsets, an expanded
                           view (stride 0), an nn.Parameter, a tensor with a
                           Python attribute (pickled through _rebuild_from_type_v2)
                           and non-tensor values (an int, a str, a list)
  hf_model/pytorch_model.bin
                           the OrderedDict state dict of a small nn.Module
                           (Linear, BatchNorm1d with its int64
                           num_batches_tracked, a nested ModuleList), as
                           transformers' save_pretrained writes it
  whole_model.pt           the same module pickled whole (torch.save(model)):
                           its classes are not needed, its state dict has the
                           same names and values (a non-persistent buffer left out)
  lightning.ckpt           a Lightning-like checkpoint: 'state_dict' (prefixed
                           "VLModel."), 'hyper_parameters' holding an instance of
                           a class defined in this script and a functools.partial,
                           'optimizer_states' with tensors, 'callbacks', 'epoch'
  legacy.pt                saved with _use_new_zipfile_serialization=False: the
                           reader must refuse it with a clear message
  expected.safetensors     the expected tensors (contiguous) written by the
                           safetensors package, named "<file>/<tensor name>":
                           a cross-format check of every value
  expected.json            per tensor of all_dtypes.pt: dtype, shape, stride,
                           storage offset; and the groups of names that share a
                           storage; "pickles": one object pickled by Python with
                           each protocol 0..5 (hex), which exercises the opcodes
                           of every protocol (text opcodes, INST/OBJ, NEWOBJ,
                           NEWOBJ_EX, STACK_GLOBAL, MEMOIZE, FRAME, sets, bytes,
                           big ints, shared references)

Deterministic except for legacy.pt, whose storage keys are object addresses
(its bytes change between runs; the reader only has to refuse it).
"""

import collections
import functools
import json
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "torch")

torch.manual_seed(0)


class HyperParams:
    """A user class in hyper_parameters: the reader must not need it."""

    def __init__(self, lr, layers):
        self.lr = lr
        self.layers = layers
        self.name = "mam-clip"


class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)
        self.bn = torch.nn.BatchNorm1d(4)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 2), torch.nn.Linear(2, 2, bias=False)])
        self.register_buffer("scratch", torch.zeros(2), persistent=False)  # not in the state dict


def all_dtypes():
    base = torch.arange(20, dtype=torch.float32).reshape(4, 5) / 4
    with_attr = torch.tensor([1.5, -2.5])
    with_attr.note = "attribute"
    return {
        "f64": torch.randn(3, 5, dtype=torch.float64),
        "f32": torch.randn(2, 3, 4),
        "f16": (torch.randn(7) * 100).to(torch.float16),
        "bf16": (torch.randn(2, 9) * 1e10).to(torch.bfloat16),
        "i64": torch.tensor([0, -1, 2**40 + 3, -(2**62), 2**63 - 1, -(2**63)], dtype=torch.int64),
        "i32": torch.tensor([[2**31 - 1, -(2**31)], [7, -7]], dtype=torch.int32),
        "i16": torch.tensor([-32768, 32767, 0, -5, 123], dtype=torch.int16),
        "i8": torch.tensor([-128, 127, 0, -1, 9], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 1, 128, 17, 64], dtype=torch.uint8),
        "bool": torch.tensor([[True, False, True], [False, False, True]]),
        "scalar": torch.tensor(3.25, dtype=torch.float32),
        "empty": torch.zeros(0, 4, dtype=torch.float32),
        "transposed": torch.randn(3, 5).t(),                 # [5, 3], stride [1, 5]
        "base": base,                                          # views of one storage:
        "row": base[2],                                        #   offset 10
        "column": base[:, 3],                                  #   offset 3, stride [5]
        "expanded": torch.tensor([1.0, 2.0, 3.0]).expand(2, 3),  # stride [0, 1]
        "param": torch.nn.Parameter(torch.randn(2, 2)),
        "with_attr": with_attr,
        "step": 7,
        "note": "not a tensor",
        "list": [1, 2.5, "x"],
    }


class Point:
    """Pickled by protocol 0/1 as INST/OBJ + BUILD, by 2+ as NEWOBJ + BUILD."""

    def __init__(self, x, y):
        self.x = x
        self.y = y


class WithKw:
    """Pickled with NEWOBJ_EX by protocol 4+ (keyword arguments to __new__)."""

    def __new__(cls, *, size):
        o = super().__new__(cls)
        o.size = size
        return o

    def __getnewargs_ex__(self):
        return (), {"size": self.size}


def pickle_cases():
    import pickle
    shared = [1, 2]
    obj = {
        "ints": [0, 1, -1, 255, 256, 65535, 65536, -2**31, 2**31 - 1, 2**31, 2**63 - 1, -2**63],
        "big": 2**70,
        "float": -2.5e-3,
        "flags": (True, False, None),
        "text": "caf\u00e9 \U0001F600 \\ \n",
        "bytes": b"\x00\xffab",
        "tuple": (1, "a", (2,)),
        "set": {3},
        "frozen": frozenset({4}),
        "shared": (shared, shared),
        "point": Point(1, "y"),
    }
    out = {}
    for proto in range(6):
        o = dict(obj)
        if proto < 3:
            o["bytes"] = "bytes as str"  # protocols 0-2 pickle bytes via codecs.encode (a REDUCE)
        if proto >= 4:
            o["kw"] = WithKw(size=5)
        out[str(proto)] = pickle.dumps(o, protocol=proto).hex()
    return out


def main():
    os.makedirs(os.path.join(OUT, "hf_model"), exist_ok=True)
    expected = {}

    # ---- all_dtypes.pt
    tensors = all_dtypes()
    path = os.path.join(OUT, "all_dtypes.pt")
    torch.save(tensors, path)
    info = {}
    for k, v in tensors.items():
        if isinstance(v, torch.Tensor):
            info[k] = {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape),
                       "stride": list(v.stride()), "storage_offset": v.storage_offset()}
    shared = collections.defaultdict(list)
    for k, v in tensors.items():
        if isinstance(v, torch.Tensor):
            shared[v.untyped_storage().data_ptr()].append(k)
    expected["all_dtypes"] = {"tensors": info, "shared": sorted(g for g in shared.values() if len(g) > 1)}
    expected["pickles"] = pickle_cases()
    back = torch.load(path, weights_only=False)
    for k, v in tensors.items():
        if isinstance(v, torch.Tensor):
            assert back[k].stride() == v.stride() and torch.equal(back[k], v), k

    flat = {"all_dtypes/" + k: v.detach().contiguous().clone()
            for k, v in tensors.items() if isinstance(v, torch.Tensor)}

    # ---- hf_model/pytorch_model.bin
    model = TinyModel()
    with torch.no_grad():
        model.bn.running_mean.copy_(torch.randn(4))
        model.bn.running_var.copy_(torch.rand(4) + 0.5)
        model.bn.num_batches_tracked.fill_(12)
    sd = model.state_dict()
    torch.save(sd, os.path.join(OUT, "hf_model", "pytorch_model.bin"))
    torch.save(model, os.path.join(OUT, "whole_model.pt"))
    flat.update({"model/" + k: v.clone() for k, v in sd.items()})

    # ---- lightning.ckpt
    vl = {"VLModel.text_projection": torch.randn(4, 4),
          "VLModel.logit_scale": torch.tensor(2.6592),
          "VLModel.encoder.weight": torch.randn(3, 4).to(torch.float16),
          "VLModel.encoder.ids": torch.arange(6, dtype=torch.int64)}
    state_dict = collections.OrderedDict(vl)
    state_dict._metadata = {"": {"version": 1}}
    ckpt = {
        "epoch": 3,
        "global_step": 42,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25),
                                                                  "best_k_models": {}}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(42.0), "exp_avg": torch.randn(4, 4)}},
                              "param_groups": [{"lr": 1e-4, "weight_decay": 1e-6, "params": [0]}]}],
        "lr_schedulers": [{"last_epoch": 3}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"config": HyperParams(1e-4, [1, 2]), "act": functools.partial(max, 0)},
    }
    torch.save(ckpt, os.path.join(OUT, "lightning.ckpt"))
    flat.update({"lightning/" + k: v.clone() for k, v in vl.items()})

    # ---- legacy.pt
    torch.save({"w": torch.ones(2)}, os.path.join(OUT, "legacy.pt"), _use_new_zipfile_serialization=False)

    save_file(flat, os.path.join(OUT, "expected.safetensors"), metadata={"source": "make_torch_fixture.py"})
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")

    for root, _, files in os.walk(OUT):
        for name in sorted(files):
            p = os.path.join(root, name)
            print(f"wrote {os.path.relpath(p, OUT)} ({os.path.getsize(p)} bytes)")


if __name__ == "__main__":
    main()
