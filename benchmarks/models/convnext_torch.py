"""PyTorch baseline for bench_convnext: timm's convnext_tiny (random init) at
the same shapes and thread count, printing lines in bench_convnext's format so
convnext_vs_torch.sh can pair them.

    python benchmarks/models/convnext_torch.py --threads 2 --cases fwd:1x224x224,train:4x224x224
    python benchmarks/models/convnext_torch.py --threads 2 --memory 1x1024x768 [--checkpointing]

fwd: eval, inference_mode. train: train mode, forward + backward of
sum(output * w), no optimizer update. --memory: one training step, peak RSS
(VmHWM) before and after it.
"""
import argparse
import statistics
import time

import timm
import torch


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return -1.0


def train_step(model, x, w):
    model.zero_grad(set_to_none=True)
    (model(x) * w).sum().backward()


def shape(s):
    b, h, w = (int(v) for v in s.split("x"))
    return b, h, w


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--cases", default="fwd:1x224x224,train:4x224x224")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--memory", default="")
    ap.add_argument("--checkpointing", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model("convnext_tiny", pretrained=False)
    tag = f"pytorch {torch.__version__} timm {timm.__version__} convnext_tiny"

    if args.memory:
        b, h, w_ = shape(args.memory)
        model.train()
        model.set_grad_checkpointing(args.checkpointing)
        x = torch.rand(b, 3, h, w_)
        w = torch.randn(b, 1000)
        before = peak_rss_mib()
        t0 = time.perf_counter()
        train_step(model, x, w)
        s = time.perf_counter() - t0
        after = peak_rss_mib()
        print(f"{tag} train-step memory batch={b} {h}x{w_} checkpointing={'on' if args.checkpointing else 'off'} "
              f"threads={args.threads}: peak RSS {after:.0f} MiB ({before:.0f} MiB before the step, "
              f"+{after - before:.0f} MiB) time {s:.2f} s")
        return

    for case in args.cases.split(","):
        mode, dims = case.split(":")
        b, h, w_ = shape(dims)
        x = torch.rand(b, 3, h, w_)
        w = torch.randn(b, 1000)
        times = []
        for i in range(args.warmup + args.iters):
            if mode == "fwd":
                model.eval()
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    model(x)
            else:
                model.train()
                t0 = time.perf_counter()
                train_step(model, x, w)
            if i >= args.warmup:
                times.append((time.perf_counter() - t0) * 1e3)
        print(f"{tag} {mode} batch={b} {h}x{w_} threads={args.threads}: "
              f"median {statistics.median(times):.2f} ms min {min(times):.2f} ms")


if __name__ == "__main__":
    main()
