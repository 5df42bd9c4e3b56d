#!/usr/bin/env python3
"""Reference values for mamclip's classification metrics
(include/mamclip/train/metrics.hpp) from scikit-learn (pinned in
tools/requirements.txt).

    /tmp/venv/bin/python tools/make_metrics_fixture.py   # tests/fixtures/metrics/sklearn.json

Each case: y_true, y_pred (int labels in [0, C)), scores [N, C] (float32
probabilities whose rows sum to 1, with many exact ties: multiples of 1/8), and
what sklearn gives for them: confusion_matrix(labels=range(C)), accuracy_score,
precision_recall_fscore_support(labels=range(C), average=None) for
zero_division 0, 1 and NaN, f1_score(average='macro') with labels=None
("present") and labels=range(C) ("all") for each zero_division,
the per-class one-vs-rest AUC (roc_auc_score(y_true == c, scores[:, c]), null
when y_true has one class only) and roc_auc_score(multi_class='ovr',
average='macro', labels=range(C)) (null for NaN). NaN is written as null.
"""
import json
import math
import pathlib
import warnings

import numpy as np
import sklearn
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support,
                             roc_auc_score)

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "metrics" / "sklearn.json"
ZERO_DIVISION = {"0": 0.0, "1": 1.0, "nan": np.nan}


def num(x):
    x = float(x)
    return None if math.isnan(x) else x


def probabilities(rng, n, c):
    # Integer weights over 8 parts: rows sum to exactly 1 and scores tie often.
    w = np.zeros((n, c), dtype=np.int64)
    for i in range(n):
        for _ in range(8):
            w[i, rng.integers(c)] += 1
    return (w / 8.0).astype(np.float32)


def case(name, y_true, y_pred, scores):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    c = scores.shape[1]
    labels = list(range(c))
    out = {"name": name, "num_classes": c, "y_true": y_true.tolist(), "y_pred": y_pred.tolist(),
           "scores": {"shape": list(scores.shape), "data": [float(x) for x in scores.reshape(-1)]},
           "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
           "accuracy": accuracy_score(y_true, y_pred), "per_class": {}, "macro_f1": {}}
    for key, zd in ZERO_DIVISION.items():
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=zd)
        out["per_class"][key] = {"precision": [num(x) for x in p], "recall": [num(x) for x in r],
                                 "f1": [num(x) for x in f], "support": s.tolist()}
        out["macro_f1"][key] = {"present": num(f1_score(y_true, y_pred, average="macro", zero_division=zd)),
                                "all": num(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=zd))}
    per_class = []
    for k in range(c):
        pos = y_true == k
        per_class.append(None if pos.all() or not pos.any() else roc_auc_score(pos, scores[:, k].astype(np.float64)))
    out["auc_per_class"] = per_class
    if c == 2:
        # sklearn's binary path takes the positive column.
        out["auc_macro"] = num(roc_auc_score(y_true, scores[:, 1].astype(np.float64))) if len(set(y_true)) == 2 else None
    else:
        out["auc_macro"] = num(roc_auc_score(y_true, scores, multi_class="ovr", average="macro", labels=labels))
    return out


def main():
    warnings.simplefilter("ignore", UndefinedMetricWarning)
    rng = np.random.default_rng(20250611)
    cases = []

    # 5 classes, 60 samples, predictions right about half the time.
    n, c = 60, 5
    y = rng.integers(c, size=n)
    pred = np.where(rng.random(n) < 0.5, y, rng.integers(c, size=n))
    cases.append(case("random5", y, pred, probabilities(rng, n, c)))

    # Class 3 absent from y_true and y_pred; class 1 predicted but never true.
    n, c = 40, 4
    y = rng.choice([0, 2], size=n)
    pred = rng.choice([0, 1, 2], size=n)
    cases.append(case("missing_class", y, pred, probabilities(rng, n, c)))

    # Class 2 in y_true but never predicted.
    n, c = 30, 3
    y = rng.integers(c, size=n)
    pred = np.where(y == 2, rng.choice([0, 1], size=n), y)
    cases.append(case("never_predicted", y, pred, probabilities(rng, n, c)))

    # Binary, heavy ties.
    n, c = 25, 2
    y = rng.integers(c, size=n)
    cases.append(case("binary", y, rng.integers(c, size=n), probabilities(rng, n, c)))

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"sklearn": sklearn.__version__, "cases": cases}, indent=None))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(cases)} cases, scikit-learn {sklearn.__version__})")


if __name__ == "__main__":
    main()
