#!/usr/bin/env python3
"""Reference values for mamclip's BERT (include/mamclip/models/bert/) from
HuggingFace transformers (pinned in tools/requirements.txt).

    /tmp/venv/bin/python tools/make_bert_fixture.py                      # tests/fixtures/bert/
    /tmp/venv/bin/python tools/make_bert_fixture.py --pubmedbert-dir DIR # full-size model, not committed
    /tmp/venv/bin/python tools/make_bert_fixture.py --check-saved DIR    # transformers loads C++-saved dirs

Default: tests/fixtures/bert/, a tiny random BERT (2 layers, hidden 64, 4
heads, intermediate 128, vocab 100, 64 positions) saved as BertForPreTraining,
the layout of the original Google checkpoints (bert.* with the pooler,
cls.predictions.*, cls.seq_relationship.*), so loading a BertModel or a
BertForMaskedLM from it exercises the prefix and head-key handling:

  model/config.json, model/model.safetensors   float32, as save_pretrained writes it
  model/vocab.txt                              the 100-token vocabulary the inputs come from
  model_bin/config.json, model_bin/pytorch_model.bin
                                               the same weights saved with
                                               safe_serialization=False in bfloat16;
                                               every weight is bfloat16-representable,
                                               so both directories hold identical values
  expected.safetensors                         inputs and reference values:
    input_ids, attention_mask, token_type_ids  int64 [3, 12] (padding in rows 1, 2)
    w_hidden [3, 12, 64], w_pool [3, 64]       fixed random weights of the BertModel loss
    last_hidden_state, pooler_output           BertModel (eval, eager attention)
    base_loss [1]                              sum(last_hidden_state * w_hidden) + sum(pooler_output * w_pool)
    grad.base.<name>                           d base_loss / d every BertModel parameter
    mlm_labels int64 [3, 12]                   -100 except a few positions
    mlm_logits [3, 12, 100], mlm_loss [1]      BertForMaskedLM, cross-entropy (mean over labelled)
    grad.mlm.<name>                            d mlm_loss / d every BertForMaskedLM parameter
                                               (tied decoder weight counted in the embedding's grad)

--pubmedbert-dir DIR writes a PubMedBERT-shaped BertModel (the config of
../shared/data/vocab/pubmedbert-base-uncased-abstract-fulltext, random init,
~440 MB safetensors) with its vocab.txt, and DIR/reference.safetensors: four
captions tokenized to length 100 (input_ids, attention_mask, token_type_ids)
and last_hidden_state, pooler_output.

--check-saved DIR loads DIR/base and DIR/mlm (what mamclip's save_pretrained
wrote from the fixture model: MAMCLIP_BERT_KEEP_SAVED=DIR build/tests/test_bert)
with BertModel / BertForMaskedLM.from_pretrained, requires no missing or
unexpected keys, and compares the outputs with expected.safetensors.

Deterministic: seeded, float32, one thread, eager attention, eval mode.
"""

import argparse
import os
import shutil

import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining, BertModel, BertTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "bert")
PUBMEDBERT = os.path.join(HERE, "..", "..", "shared", "data", "vocab", "pubmedbert-base-uncased-abstract-fulltext")

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a of and in with no is are there breast mass masses calcification calcifications left right "
    "upper lower outer inner quadrant dense fatty tissue scattered fibroglandular heterogeneously "
    "extremely benign malignant suspicious spiculated round oval irregular margin margins circumscribed "
    "architectural distortion asymmetry focal lymph node axillary skin nipple retraction birads "
    "category finding findings seen view cc mlo size cm mm stable new . , - 0 1 2 3 4 5 6"
).split()
PIECES = ["##s", "##ed", "##ing", "##al", "##ly", "##ic", "##er", "##ion", "##ity", "##ous", "##ate"]
SENTENCES = [
    "spiculated mass in the upper outer quadrant, birads 5.",
    "scattered fibroglandular tissue.",
    "benign round calcifications, left breast.",
]
SEQ_LEN = 12


def tiny_vocab():
    vocab = SPECIAL + WORDS + PIECES
    vocab += [f"[unused{i}]" for i in range(100 - len(vocab))]
    assert len(vocab) == 100 and len(set(vocab)) == 100, len(vocab)
    return vocab


def tiny_config():
    return BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, pad_token_id=0, attn_implementation="eager",
    )


def randomise_and_round(model):
    """HF init, then LayerNorm affine and biases made non-trivial; every value
    rounded to bfloat16 so a bfloat16 copy of the checkpoint is exact."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias") or name.endswith("LayerNorm.bias"):
                p.copy_(0.05 * torch.randn_like(p))
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    out = {}
    for name, p in model.named_parameters():  # tied parameters once, under their first name
        assert p.grad is not None, name
        out[name] = p.grad.detach().clone()
    return out


def make_fixture():
    torch.manual_seed(0)
    model_dir, bin_dir = os.path.join(OUT, "model"), os.path.join(OUT, "model_bin")
    for d in (model_dir, bin_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)

    vocab_path = os.path.join(model_dir, "vocab.txt")
    with open(vocab_path, "w") as f:
        f.write("\n".join(tiny_vocab()) + "\n")
    tok = BertTokenizer(vocab_path, do_lower_case=True)
    enc = tok(SENTENCES, padding="max_length", max_length=SEQ_LEN, truncation=True, return_tensors="pt")
    input_ids = enc["input_ids"]
    attention_mask = enc["attention_mask"]
    assert (input_ids != tok.unk_token_id).all(), tok.convert_ids_to_tokens(input_ids.reshape(-1).tolist())
    assert (attention_mask == 0).any(), "the batch must contain padding"
    # Second segment: the tail of each real sequence (nonzero token types, as in a sentence pair).
    token_type_ids = torch.zeros_like(input_ids)
    lengths = attention_mask.sum(1)
    for b in range(input_ids.shape[0]):
        token_type_ids[b, int(lengths[b]) // 2: int(lengths[b])] = 1

    config = tiny_config()
    pretraining = BertForPreTraining(config)
    randomise_and_round(pretraining)
    pretraining.save_pretrained(model_dir)  # safetensors, float32
    pretraining.to(torch.bfloat16).save_pretrained(bin_dir, safe_serialization=False)
    assert os.path.exists(os.path.join(bin_dir, "pytorch_model.bin"))

    st = load_file(os.path.join(model_dir, "model.safetensors"))
    bin_sd = torch.load(os.path.join(bin_dir, "pytorch_model.bin"), weights_only=True)
    # safetensors drops tied copies; torch.save keeps them as views of one storage.
    assert set(bin_sd) - set(st) == {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert set(st) <= set(bin_sd), sorted(set(st) - set(bin_sd))
    for k in st:
        assert torch.equal(st[k], bin_sd[k].float()), k
    print("checkpoint keys:", sorted(st))

    out = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}

    # ---- BertModel
    base = BertModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    assert base.pooler is not None
    o = base(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    w_hidden = torch.randn(o.last_hidden_state.shape)
    w_pool = torch.randn(o.pooler_output.shape)
    base_loss = (o.last_hidden_state * w_hidden).sum() + (o.pooler_output * w_pool).sum()
    out.update(w_hidden=w_hidden, w_pool=w_pool, last_hidden_state=o.last_hidden_state.detach(),
               pooler_output=o.pooler_output.detach(), base_loss=base_loss.detach().reshape(1))
    for name, g in grads(base, base_loss).items():
        out["grad.base." + name] = g
    # The bfloat16 checkpoint gives the same model.
    base_bin = BertModel.from_pretrained(bin_dir, attn_implementation="eager", dtype=torch.float32).eval()
    o2 = base_bin(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    assert torch.equal(o2.last_hidden_state, o.last_hidden_state)
    # No mask == all-ones mask.
    o3 = base(input_ids=input_ids, token_type_ids=token_type_ids)
    o4 = base(input_ids=input_ids, attention_mask=torch.ones_like(attention_mask), token_type_ids=token_type_ids)
    assert torch.equal(o3.last_hidden_state, o4.last_hidden_state)

    # ---- BertForMaskedLM
    mlm = BertForMaskedLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    labels = torch.full_like(input_ids, -100)
    g = torch.Generator().manual_seed(1)
    real = (attention_mask == 1).nonzero().tolist()
    picks = torch.randperm(len(real), generator=g)[:8].tolist()
    for i in picks:
        b, t = real[i]
        labels[b, t] = int(torch.randint(0, config.vocab_size, (1,), generator=g))
    labels[0, 1] = 0  # the padding id as a label: its decoder row gets a gradient, its embedding row none
    logits = mlm(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
    mlm_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, config.vocab_size), labels.reshape(-1),
                                                 ignore_index=-100)
    out.update(mlm_labels=labels, mlm_logits=logits.detach(), mlm_loss=mlm_loss.detach().reshape(1))
    for name, gr in grads(mlm, mlm_loss).items():
        out["grad.mlm." + name] = gr

    out = {k: v.contiguous() for k, v in out.items()}
    save_file(out, os.path.join(OUT, "expected.safetensors"), metadata={"format": "pt"})
    total = 0
    for root, _, files in os.walk(OUT):
        for f in sorted(files):
            p = os.path.join(root, f)
            total += os.path.getsize(p)
            print(f"wrote {os.path.relpath(p, OUT)}: {os.path.getsize(p)} bytes")
    print(f"total {total} bytes; base loss {float(base_loss.detach()):.6f}, mlm loss {float(mlm_loss.detach()):.6f}")


def make_pubmedbert(out_dir):
    torch.manual_seed(0)
    os.makedirs(out_dir, exist_ok=True)
    config = BertConfig.from_pretrained(PUBMEDBERT, attn_implementation="eager")
    model = BertModel(config).eval()
    model.save_pretrained(out_dir)
    shutil.copy(os.path.join(PUBMEDBERT, "vocab.txt"), out_dir)
    shutil.copy(os.path.join(PUBMEDBERT, "tokenizer_config.json"), out_dir)
    tok = BertTokenizer.from_pretrained(PUBMEDBERT)
    captions = [
        "Spiculated mass in the upper outer quadrant of the left breast, highly suggestive of malignancy (BI-RADS 5).",
        "Scattered areas of fibroglandular density. No suspicious findings.",
        "Grouped amorphous microcalcifications in the right breast retroareolar region.",
        "Heterogeneously dense breasts, which may obscure small masses; benign-appearing lymph node.",
    ]
    enc = tok(captions, padding="max_length", max_length=100, truncation=True, return_tensors="pt")
    token_type_ids = torch.zeros_like(enc["input_ids"])
    model = BertModel.from_pretrained(out_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        o = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], token_type_ids=token_type_ids)
    save_file({"input_ids": enc["input_ids"].contiguous(), "attention_mask": enc["attention_mask"].contiguous(),
               "token_type_ids": token_type_ids, "last_hidden_state": o.last_hidden_state.contiguous(),
               "pooler_output": o.pooler_output.contiguous()},
              os.path.join(out_dir, "reference.safetensors"), metadata={"format": "pt"})
    for f in sorted(os.listdir(out_dir)):
        print(f"wrote {os.path.join(out_dir, f)}: {os.path.getsize(os.path.join(out_dir, f))} bytes")


def check_saved(saved_dir):
    """saved_dir/base (a BertModel) and saved_dir/mlm (a BertForMaskedLM), as
    test_bert leaves them with MAMCLIP_BERT_KEEP_SAVED=saved_dir."""
    exp = load_file(os.path.join(OUT, "expected.safetensors"))
    inputs = dict(input_ids=exp["input_ids"], attention_mask=exp["attention_mask"],
                  token_type_ids=exp["token_type_ids"])

    def close(name, got, ref):
        err = float((got - ref).abs().max() / ref.abs().max())
        print(f"{name}: max relative error {err:.3g}")
        assert err <= 1e-5, name

    base_dir, mlm_dir = os.path.join(saved_dir, "base"), os.path.join(saved_dir, "mlm")
    base, info = BertModel.from_pretrained(base_dir, attn_implementation="eager", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    with torch.no_grad():
        o = base.eval()(**inputs)
    close("BertModel last_hidden_state", o.last_hidden_state, exp["last_hidden_state"])
    close("BertModel pooler_output", o.pooler_output, exp["pooler_output"])
    mlm, info = BertForMaskedLM.from_pretrained(mlm_dir, attn_implementation="eager", output_loading_info=True)
    assert not any(info.values()), info
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    with torch.no_grad():
        close("BertForMaskedLM logits", mlm.eval()(**inputs).logits, exp["mlm_logits"])
    print(f"transformers loaded {base_dir} and {mlm_dir} and reproduced the reference outputs")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pubmedbert-dir", help="write a full-size PubMedBERT-shaped model and reference here")
    ap.add_argument("--check-saved", help="load a mamclip-saved BertModel dir with transformers and compare")
    args = ap.parse_args()
    if args.pubmedbert_dir:
        make_pubmedbert(args.pubmedbert_dir)
    elif args.check_saved:
        check_saved(args.check_saved)
    else:
        make_fixture()
