"""PyTorch baseline for bench_convnext: timm's convnext_tiny or convnext_small
(random init) at the same shapes, device and thread count, printing lines in
bench_convnext's format so convnext_vs_torch.sh can pair them.

    python benchmarks/models/convnext_torch.py --threads 2 --cases fwd:1x224x224,train:4x224x224
    python benchmarks/models/convnext_torch.py --threads 2 --memory 1x1024x768 [--checkpointing]
    python benchmarks/models/convnext_torch.py --model convnext_small --device cuda --precision bf16 \
        --cases train:8x1024x768

fwd: eval, inference_mode. train: train mode, forward + backward of
sum(output * w), no optimizer update. --memory: one training step, peak RSS
(VmHWM) before and after it. On a GPU, model and input are channels_last (the
layout PyTorch's convolutions are fastest in) unless --no-channels-last, and
each timed run ends with torch.cuda.synchronize(). --precision bf16 / fp16:
forward and loss in torch.autocast.
"""
import argparse
import contextlib
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


def autocast(device, precision):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def wait(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, x, w, device=torch.device("cpu"), precision="fp32"):
    model.zero_grad(set_to_none=True)
    with autocast(device, precision):
        loss = (model(x) * w).sum()
    loss.backward()
    wait(device)


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
    ap.add_argument("--model", default="convnext_tiny", choices=["convnext_tiny", "convnext_small"])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--no-channels-last", action="store_true", help="keep NCHW on a GPU")
    args = ap.parse_args()
    device = torch.device(args.device)
    on_cpu_fp32 = device.type == "cpu" and args.precision == "fp32"
    where = f"threads={args.threads}" if on_cpu_fp32 else f"device={args.device} precision={args.precision}"
    layout = torch.channels_last if device.type == "cuda" and not args.no_channels_last else torch.contiguous_format

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False)
    tag = f"pytorch {torch.__version__} timm {timm.__version__} {args.model}"

    if args.memory and not on_cpu_fp32:
        raise SystemExit("convnext_torch: --memory measures the CPU's resident set: use it without --device / --precision")
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

    model = model.to(device, memory_format=layout)
    for case in args.cases.split(","):
        mode, dims = case.split(":")
        b, h, w_ = shape(dims)
        x = torch.rand(b, 3, h, w_).to(device, memory_format=layout)
        w = torch.randn(b, 1000).to(device)
        times = []
        for i in range(args.warmup + args.iters):
            if mode == "fwd":
                model.eval()
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    with autocast(device, args.precision):
                        model(x)
                    wait(device)
            else:
                model.train()
                t0 = time.perf_counter()
                train_step(model, x, w, device, args.precision)
            if i >= args.warmup:
                times.append((time.perf_counter() - t0) * 1e3)
        print(f"{tag} {mode} batch={b} {h}x{w_} {where}: "
              f"median {statistics.median(times):.2f} ms min {min(times):.2f} ms")


if __name__ == "__main__":
    main()
