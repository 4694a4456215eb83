"""Seconds of the training-set metrics (memorisation rate, authenticity, k-NN entropy) on random features of the
sizes a run produces, so the cost of ``[metrics] train_set_metrics = true`` can be read next to the rest.

Each size runs every measure once on Gaussian features (candidate n × d against a training set of n_train × d)
and prints the wall time of each; the values are printed too (for independent Gaussian draws the memorisation
rate tends to 3⁻ᵈ, i.e. 0 beyond a few dimensions).

Usage::

    python benchmarks/bench_train_set_metrics.py [--sizes 1000x64,5000x64,5000x2048] [--train-factor 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from imgsynth.metrics.entropy import knn_entropy
from imgsynth.metrics.memorisation import authenticity, memorisation_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000x64,5000x64,5000x2048", help="comma-separated n×d of the candidate")
    parser.add_argument("--train-factor", type=float, default=2.0, help="training rows per candidate row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    warm = rng.normal(size=(50, 4))  # untimed: sklearn's import and thread pools would land on the first row
    memorisation_rate(warm, warm), authenticity(warm, warm), knn_entropy(warm, 5)
    print(f"{'n':>7} {'d':>5} {'n_train':>8}  {'measure':<18} {'seconds':>8}  value")
    for size in args.sizes.split(","):
        n, d = (int(v) for v in size.lower().split("x"))
        n_train = int(n * args.train_factor)
        candidate, train = rng.normal(size=(n, d)), rng.normal(size=(n_train, d))
        for name, measure in (("memorisation_rate", lambda: memorisation_rate(candidate, train)),
                              ("authenticity", lambda: authenticity(candidate, train)),
                              ("knn_entropy", lambda: knn_entropy(candidate, 5)),
                              ("train_knn_entropy", lambda: knn_entropy(train, 5))):
            started = time.perf_counter()
            value = measure()
            print(f"{n:>7} {d:>5} {n_train:>8}  {name:<18} {time.perf_counter() - started:>8.2f}  {value:.4g}")


if __name__ == "__main__":
    main()
