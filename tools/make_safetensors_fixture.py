#!/usr/bin/env python3
"""Generate tests/fixtures/safetensors/: files written by the reference
`safetensors` package (pinned in tools/requirements.txt) that the C++ reader
must read and the C++ writer must reproduce byte for byte.

    /tmp/venv/bin/python tools/make_safetensors_fixture.py

Files:
  all_dtypes.safetensors  one tensor per dtype mamclip loads (F64 F32 F16 BF16
                          I64 I32 I16 I8 U8 BOOL, with extreme integers), a
                          0-dim and an empty tensor, a U16 and an F8_E4M3
                          tensor (valid files, dtypes mamclip refuses to load),
                          and two metadata entries
  golden.safetensors      the eight dtypes the writer supports, names that need
                          JSON escaping, one metadata entry: the C++ test reads
                          it, writes it back and must get the same bytes
  sharded/                a two-shard checkpoint with model.safetensors.index.json
                          (HuggingFace layout); shard 2 also holds a tensor the
                          index does not map
  expected.json           every tensor above as {"dtype", "shape", "data"}:
                          floats as the exact double value of each element,
                          integers exact, bools as 0/1

Deterministic except for one thing: the reference writer keeps __metadata__ in
a hash map, so the order of all_dtypes' two metadata entries in its header can
change between runs (readers see the same map). Everything else, including
golden.safetensors, is identical byte for byte on every run.
"""

import json
import os

import torch
from safetensors.torch import load_file, save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "safetensors")

torch.manual_seed(0)


def describe(t):
    flat = t.reshape(-1)
    if t.dtype == torch.bool:
        data = [int(v) for v in flat.tolist()]
    elif t.dtype.is_floating_point and t.dtype.itemsize < 4 or t.dtype == torch.float8_e4m3fn:
        data = flat.to(torch.float64).tolist()  # exact: every f16/bf16/f8 value is a double
    else:
        data = flat.tolist()
    return {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "data": data}


def main():
    os.makedirs(os.path.join(OUT, "sharded"), exist_ok=True)
    expected = {}

    i64 = torch.tensor([0, -1, 2**40 + 3, -(2**62), 2**63 - 1, -(2**63)], dtype=torch.int64)
    all_dtypes = {
        "f64": torch.randn(3, 5, dtype=torch.float64),
        "f32": torch.randn(2, 3, 4),
        "f16": (torch.randn(7) * 100).to(torch.float16),
        "bf16": (torch.randn(2, 9) * 1e10).to(torch.bfloat16),
        "i64": i64,
        "i32": torch.tensor([[2**31 - 1, -(2**31)], [7, -7]], dtype=torch.int32),
        "i16": torch.tensor([-32768, 32767, 0, -5, 123], dtype=torch.int16),
        "i8": torch.tensor([-128, 127, 0, -1, 9], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 1, 128, 17, 64], dtype=torch.uint8),
        "bool": torch.tensor([[True, False, True], [False, False, True]]),
        "scalar": torch.tensor(3.25, dtype=torch.float32),
        "empty": torch.zeros(0, 4, dtype=torch.float32),
        "u16": torch.tensor([1, 65535, 300], dtype=torch.uint16),
        "f8": torch.tensor([0.5, -2.0, 448.0], dtype=torch.float8_e4m3fn),
    }
    save_file(all_dtypes, os.path.join(OUT, "all_dtypes.safetensors"),
              metadata={"format": "pt", "source": "make_safetensors_fixture.py"})
    expected["all_dtypes"] = {k: describe(v) for k, v in all_dtypes.items()}

    golden = {
        "a.weight": torch.randn(3, 5),
        "a.bias": torch.randn(5, dtype=torch.float64),
        "h": (torch.randn(2, 3) * 10).to(torch.float16),
        "b": torch.randn(4, 1, 3).to(torch.bfloat16),
        "ids": torch.tensor([[5, -3, 2**50]], dtype=torch.int64),
        "i32 scalar": torch.tensor(-42, dtype=torch.int32),
        "bytes": torch.tensor([1, 2, 250], dtype=torch.uint8),
        "mask": torch.tensor([True, False, True, True, False]),
        "empty": torch.zeros(2, 0, dtype=torch.float32),
        'quote " back \\ nl \n tab \t ctl \x01 del \x7f': torch.tensor([1.0, 2.0]),
        "caf\u00e9 \U0001F600 /slash": torch.tensor([7], dtype=torch.int32),
    }
    save_file(golden, os.path.join(OUT, "golden.safetensors"), metadata={"format": "pt"})
    expected["golden"] = {k: describe(v) for k, v in golden.items()}

    shard1 = {
        "embeddings.word_embeddings.weight": torch.randn(6, 4),
        "embeddings.position_ids": torch.arange(5, dtype=torch.int64).unsqueeze(0),
    }
    shard2 = {
        "encoder.layer.0.weight": torch.randn(4, 4),
        "encoder.layer.0.bias": torch.randn(4).to(torch.float16),
        "unmapped.extra": torch.ones(2),
    }
    names1 = "model-00001-of-00002.safetensors"
    names2 = "model-00002-of-00002.safetensors"
    save_file(shard1, os.path.join(OUT, "sharded", names1), metadata={"format": "pt"})
    save_file(shard2, os.path.join(OUT, "sharded", names2), metadata={"format": "pt"})
    weight_map = {k: names1 for k in shard1}
    weight_map.update({k: names2 for k in shard2 if k != "unmapped.extra"})
    total = sum(v.numel() * v.element_size() for d in (shard1, shard2) for k, v in d.items() if k in weight_map)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(OUT, "sharded", "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    expected["sharded"] = {k: describe(v) for d in (shard1, shard2) for k, v in d.items() if k in weight_map}

    # The files load back in the reference implementation.
    for name, tensors in (("all_dtypes", all_dtypes), ("golden", golden)):
        back = load_file(os.path.join(OUT, name + ".safetensors"))
        for k, v in tensors.items():
            assert back[k].dtype == v.dtype and torch.equal(back[k].to(torch.float64), v.to(torch.float64)), (name, k)

    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
