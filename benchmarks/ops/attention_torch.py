"""PyTorch's scaled_dot_product_attention at bench_attention's shapes, for the
side-by-side table of attention_vs_torch.sh: bfloat16 on CUDA, no mask, the
flash and cuDNN backends, best of the timed runs with an L2 flush before each
(as bench_attention times). One line per shape and backend:

  L=128   D=64   flash fwd 0.123 ms fwd+bwd 0.456 ms

  python3 benchmarks/ops/attention_torch.py [--reps 20]
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def best_ms(fn, reps):
    fn()
    torch.cuda.synchronize()
    flush = torch.empty(2 * torch.cuda.get_device_properties(0).L2_cache_size, dtype=torch.uint8, device="cuda")
    best = float("inf")
    for _ in range(reps):
        flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    for d in (64, 96):
        for l in (100, 128, 512, 2048):
            h, b = (8 if d == 96 else 12), max(1, 16384 // l)
            q, k, v, g = (torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
            for name, backend in backends.items():
                try:
                    with sdpa_kernel(backend):
                        fwd = best_ms(lambda: F.scaled_dot_product_attention(q, k, v), args.reps)

                        def step():
                            qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
                            F.scaled_dot_product_attention(qq, kk, vv).backward(g)

                        both = best_ms(step, args.reps)
                    print(f"L={l:<5d} D={d:<4d} {name} fwd {fwd:.3f} ms fwd+bwd {both:.3f} ms")
                except RuntimeError as e:  # a backend that does not take this shape on this GPU
                    print(f"L={l:<5d} D={d:<4d} {name} unavailable: {str(e).splitlines()[0]}")


if __name__ == "__main__":
    main()
