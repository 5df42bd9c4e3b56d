"""PyTorch baseline for bench_depthwise: F.conv2d with groups = C (7x7,
padding 3, bias) in float32 on the CPU, forward (no grad) and forward +
backward (input, weight and bias gradients), one line per case in
bench_depthwise's format so depthwise_vs_torch.sh can pair them.

    python benchmarks/ops/depthwise_torch.py --threads 2 --cases 1x96x56x56
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def timed(fn, warmup, iters):
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--cases", default="1x96x56x56,1x384x14x14,1x96x256x192", help="comma-separated NxCxHxW")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for case in args.cases.split(","):
        n, c, h, w = (int(v) for v in case.split("x"))
        x, wt, b = torch.rand(n, c, h, w), torch.rand(c, 1, 7, 7), torch.rand(c)
        gy = torch.rand(n, c, h, w)

        def fwd():
            with torch.no_grad():
                F.conv2d(x, wt, b, padding=3, groups=c)

        def fwd_bwd():
            xl, wl, bl = x.detach().requires_grad_(), wt.detach().requires_grad_(), b.detach().requires_grad_()
            F.conv2d(xl, wl, bl, padding=3, groups=c).backward(gy)

        fm, fb = timed(fwd, args.warmup, args.iters)
        bm, bb = timed(fwd_bwd, args.warmup, args.iters)
        print(f"pytorch {torch.__version__} depthwise7x7 N={n} C={c} H={h} W={w} threads={args.threads}: "
              f"fwd median {fm:.3f} ms min {fb:.3f} ms; fwd+bwd median {bm:.3f} ms min {bb:.3f} ms")


if __name__ == "__main__":
    main()
