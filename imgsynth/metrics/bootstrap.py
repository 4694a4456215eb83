"""Seeded bootstrap confidence intervals for any metric on feature matrices.

What is resampled: each replicate draws the candidate rows with replacement and, for two-sample
metrics (FD, KID, CMMD, precision/recall/density/coverage), the reference rows too, independently:
both sets are finite samples and both contribute to the uncertainty. One-sample metrics (diversity,
Vendi, CLIP score) resample the candidate only; paired data (text embeddings for CLIP score) follow
the candidate's indices. Replicate ``b`` uses ``numpy.random.default_rng([seed, b])``.

Which interval (``method``):

* ``"percentile"`` — the textbook percentile interval of the replicates.
* ``"recentred"`` (default) — the same percentiles, shifted so the replicates' median sits on the
  full-sample value: ``[θ̂ − (median − q_low), θ̂ + (q_high − median)]``.

Why the default is recentred: resampling with replacement duplicates rows, and nearly every metric
here reacts to exact duplicates, not just to sampling noise. Duplicates are zero-distance neighbours
(k-NN radii shrink: precision, recall, coverage drop), zero-distance pairs (diversity and Vendi drop),
k(x, x) terms inside KID's off-diagonal sums (KID rises), and a smaller effective n (FD's 1/n bias
rises). On 30 vs 25 Gaussian samples in 8-d, FD = 1.18 had a percentile interval of [1.32, 2.78] and
KID = 0.098 one of [0.10, 0.80]: intervals that exclude the value they belong to. The recentred
interval keeps the bootstrap's spread and skew (what a dashboard needs to tell noise from change)
but centres it on the reported value. It is an interval for the statistic's sampling variability,
not a bias correction: FD and KID at small n stay biased, and only equal-n values compare.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch

from imgsynth.metrics.blocks import progress_bar

Statistic = Callable[..., Mapping[str, float]]
METHODS = ("recentred", "percentile")


def bootstrap_replicates(statistic: Statistic, candidate: torch.Tensor, reference: torch.Tensor | None = None, *,
                         replicates: int, seed: int = 0, extra: tuple[torch.Tensor, ...] = (),
                         progress: bool | None = None) -> dict[str, np.ndarray]:
    """``statistic`` on ``replicates`` resamples: ``{name: array of replicate values}``.

    ``statistic(candidate_rows, reference_rows, *extra_rows)`` — or ``statistic(candidate_rows,
    *extra_rows)`` when ``reference`` is None — returns named floats. Memory: one resampled copy of each
    set at a time (the previous replicate's is freed before the next is drawn) plus what ``statistic``
    takes; the built-in metrics work in blocks, so that is O(n·d), not O(n²). ``progress`` shows a bar
    over the replicates.
    """
    if replicates < 1:
        raise ValueError(f"bootstrap needs at least one replicate, got {replicates}")
    values: dict[str, list[float]] = {}
    n_candidate = candidate.shape[0]
    with progress_bar(replicates, "bootstrap", progress, unit="replicate") as bar:
        for b in range(replicates):
            rng = np.random.default_rng([seed, b])
            rows = torch.from_numpy(rng.integers(0, n_candidate, n_candidate))
            args = [candidate[rows.to(candidate.device)]]
            if reference is not None:
                ref_rows = torch.from_numpy(rng.integers(0, reference.shape[0], reference.shape[0]))
                args.append(reference[ref_rows.to(reference.device)])
            args.extend(e[rows.to(e.device)] for e in extra)
            for name, value in statistic(*args).items():
                values.setdefault(name, []).append(float(value))
            del args  # before the next replicate's copies exist, not after
            bar.update(1)
    return {name: np.asarray(v) for name, v in values.items()}


def bootstrap_intervals(statistic: Statistic, candidate: torch.Tensor, reference: torch.Tensor | None = None, *,
                        replicates: int, seed: int = 0, confidence: float = 0.95, method: str = "recentred",
                        estimate: Mapping[str, float] | None = None,
                        bounds: Mapping[str, tuple[float, float]] | None = None,
                        extra: tuple[torch.Tensor, ...] = (),
                        progress: bool | None = None) -> dict[str, tuple[float, float]]:
    """Intervals ``{name: (low, high)}`` at ``confidence`` for each value ``statistic`` returns.

    ``estimate`` is the full-sample value (computed here when not given; only ``"recentred"`` uses it).
    ``bounds`` clips a metric's interval to the values it can take (a recentred coverage interval
    must not pass 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if method not in METHODS:
        raise ValueError(f"bootstrap method must be one of {METHODS}, got {method!r}")
    samples = bootstrap_replicates(statistic, candidate, reference, replicates=replicates, seed=seed, extra=extra,
                                   progress=progress)
    tail = (1.0 - confidence) / 2 * 100
    if method == "recentred" and estimate is None:
        args = (candidate,) + ((reference,) if reference is not None else ()) + tuple(extra)
        estimate = statistic(*args)
    intervals = {}
    for name, values in samples.items():
        low, middle, high = np.percentile(values, [tail, 50.0, 100 - tail])
        if method == "recentred":
            centre = float(estimate[name])
            low, high = centre - (middle - low), centre + (high - middle)
        if bounds and name in bounds:
            low, high = np.clip([low, high], *bounds[name])
        intervals[name] = (float(low), float(high))
    return intervals
