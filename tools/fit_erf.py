#!/usr/bin/env python3
"""Fits the rational erf used by the vectorised GELU (ops/elementwise/gelu_simd.hpp).

erf(x) / x ~= P(t) / Q(t), t = x^2, on x in [0, 4], P of degree 6 and Q of
degree 5 with Q(0) = 1, by linearised least squares on the relative error,
reweighted towards the minimax solution (Lawson). Prints the coefficients as
C++ initialisers and the largest error of a float32 evaluation in ulp.

    python tools/fit_erf.py        (numpy 2.4.6)
"""
import math

import numpy as np

DP, DQ, ITERS = 6, 5, 60


def fit():
    xs = np.linspace(0.0, 4.0, 20001)
    ts = xs**2
    f = np.array([math.erf(x) / x if x > 0 else 2.0 / math.sqrt(math.pi) for x in xs])
    w = np.ones_like(ts)
    for _ in range(ITERS):
        cols_p = np.vstack([ts**k for k in range(DP + 1)]).T
        cols_q = -(f[:, None] * np.vstack([ts**k for k in range(1, DQ + 1)]).T)
        a = np.hstack([cols_p, cols_q]) * (w / f)[:, None]
        sol, *_ = np.linalg.lstsq(a, w, rcond=None)
        p, q = sol[: DP + 1], np.concatenate([[1.0], sol[DP + 1 :]])
        rel = (np.polyval(p[::-1], ts) / np.polyval(q[::-1], ts) - f) / f
        w = w * np.sqrt(np.abs(rel) + 1e-30)
        w /= w.mean()
    return p, q, np.abs(rel).max()


def float32_ulp_error(p, q):
    xs = np.linspace(0.0, 4.0, 400001).astype(np.float32)
    t = xs * xs
    pv = np.float32(0)
    for c in p[::-1]:
        pv = (pv * t + np.float32(c)).astype(np.float32)
    qv = np.float32(0)
    for c in q[::-1]:
        qv = (qv * t + np.float32(c)).astype(np.float32)
    y = np.minimum((xs * pv / qv).astype(np.float32), np.float32(1))
    ref = np.array([math.erf(float(x)) for x in xs])
    return (np.abs(y - ref) / np.spacing(np.abs(ref).astype(np.float32))).max()


if __name__ == "__main__":
    p, q, rel = fit()
    print(f"// max relative error {rel:.2e}; float32 Horner evaluation within {float32_ulp_error(p, q):.1f} ulp")
    print("kP[] = {" + ", ".join(f"{c:.9e}f" for c in p) + "};")
    print("kQ[] = {" + ", ".join(f"{c:.9e}f" for c in q) + "};")
