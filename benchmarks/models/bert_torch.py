"""PyTorch baseline for bench_bert: BERT-base forward (transformers' BertModel,
eval, no grad) at the same shapes and thread count, printing one line per case
in bench_bert's format so bert_vs_torch.sh can pair them.

    python benchmarks/models/bert_torch.py --threads 2 --cases 1x128,8x128
"""
import argparse
import statistics
import time

import torch
from transformers import BertConfig, BertModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--cases", default="1x128,8x128", help="comma-separated BATCHxSEQ")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = BertConfig(attn_implementation=args.attn)  # BERT-base: 12 layers, hidden 768, 12 heads, vocab 30522 (PubMedBERT's shape)
    model = BertModel(config).eval()
    for case in args.cases.split(","):
        batch, seq = (int(v) for v in case.split("x"))
        ids = torch.randint(5, config.vocab_size, (batch, seq))
        mask = torch.ones(batch, seq, dtype=torch.long)
        times = []
        with torch.inference_mode():
            for i in range(args.warmup + args.iters):
                t0 = time.perf_counter()
                model(input_ids=ids, attention_mask=mask)
                if i >= args.warmup:
                    times.append((time.perf_counter() - t0) * 1e3)
        print(f"pytorch {torch.__version__} bert-base forward batch={batch} seq={seq} threads={args.threads}: "
              f"median {statistics.median(times):.2f} ms min {min(times):.2f} ms")


if __name__ == "__main__":
    main()
