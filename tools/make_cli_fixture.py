#!/usr/bin/env python3
"""Reference output of `mamclip embed` for tests/cli/test_cli.cpp: HuggingFace
transformers' BertModel on the tiny BERT fixture (tests/fixtures/bert/model,
written by make_bert_fixture.py) over the lines of tests/fixtures/cli/texts.txt.

    /tmp/venv/bin/python tools/make_cli_fixture.py

Writes tests/fixtures/cli/:
  texts.txt                  the stdin of the test: one text per line, one line
                             ending in \\r\\n, one empty line, one line longer
                             than the short max_length
  embed_expected.safetensors for max_length 64 (the default: the model's
                             max_position_embeddings) and 8 (truncating):
    <m>.last_hidden_state float32 [N, L, H], <m>.attention_mask int64 [N, L],
    <m>.cls float32 [N, H], <m>.input_ids int64 [N, L]  with <m> = max64, max8
  The texts are tokenized with the Python BertTokenizer (uncased, the model
  directory has no tokenizer_config.json), padding="longest", truncation, and
  run in one batch, eval mode, eager attention, token_type_ids all zero.

Pinned versions: tools/requirements.txt. Deterministic (one thread, fixed weights).
"""

import os

import torch
from safetensors.torch import save_file
from transformers import BertModel, BertTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "tests", "fixtures", "bert", "model")
OUT = os.path.join(HERE, "..", "tests", "fixtures", "cli")

torch.set_num_threads(1)

TEXTS = [
    "Spiculated mass in the upper outer quadrant, BIRADS 5.",
    "scattered fibroglandular tissue.",
    "",
    "Benign round calcifications, left breast; stable since 2 views: cc and mlo, size 3 mm. no new findings",
    "heterogeneously dense Breasts",
]
CRLF_LINE = 1  # this line ends in \r\n in texts.txt


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "texts.txt"), "wb") as f:
        for i, t in enumerate(TEXTS):
            f.write(t.encode("utf-8") + (b"\r\n" if i == CRLF_LINE else b"\n"))
    tok = BertTokenizer(os.path.join(MODEL, "vocab.txt"), do_lower_case=True)
    model = BertModel.from_pretrained(MODEL, attn_implementation="eager", add_pooling_layer=False).eval()
    out = {}
    for max_length in (64, 8):
        enc = tok(TEXTS, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                      token_type_ids=torch.zeros_like(enc["input_ids"])).last_hidden_state
        p = f"max{max_length}."
        out[p + "last_hidden_state"] = h.float().contiguous()
        out[p + "attention_mask"] = enc["attention_mask"].to(torch.int64).contiguous()
        out[p + "cls"] = h[:, 0].float().contiguous()
        out[p + "input_ids"] = enc["input_ids"].to(torch.int64).contiguous()
        print(f"max_length {max_length}: input_ids {list(enc['input_ids'].shape)}, "
              f"unknown tokens {(enc['input_ids'] == tok.unk_token_id).sum().item()}")
    path = os.path.join(OUT, "embed_expected.safetensors")
    save_file(out, path, metadata={"model": "tests/fixtures/bert/model"})
    for name in ("texts.txt", "embed_expected.safetensors"):
        print(f"wrote {os.path.join(OUT, name)} ({os.path.getsize(os.path.join(OUT, name))} bytes)")


if __name__ == "__main__":
    main()
