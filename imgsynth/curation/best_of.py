"""Best-of-K curation (Ferbach et al. 2024, "Self-consuming generative models with curated data"): of every K
candidates keep the one a reward ranks highest.

**Which candidates compete.** Within each class, the class's images in set order are dealt into
m = ⌊n_c / K⌋ groups: the image at class position p belongs to group p mod m (positions ≥ m·K, an
incomplete last round, are dropped). For a generated set of K·m images per class, position is the image's
index within its class, so candidate j of kept image i is image index j·m + i — its seed hashed from
(sample seed, class, index) like every image's (``pipelines/work.py``), hence the same however sampling was
split or resumed, and candidate 0 of every group is the image an uncurated sample of m per class holds.
The loop's curate stage samples K × ``per_class`` per class when ``[curate] best_of`` = K, so the kept set
has ``per_class`` per class, as without curation.

Ties go to the earlier candidate. With K = 1 every image is its own group: nothing is scored or dropped
(the stage is skipped, so a set curated with ``best_of = 1`` and nothing else is the input set itself).
Each kept image's (K, reward, rank 1) and each dropped candidate's (reward, rank, the image kept instead)
go into the curated set's ``curation`` record.

**What it does to a Gaussian.** If a reward is increasing in a statistic s that is N(μ, σ²) over the
generator's samples, the kept images' s is the largest of K independent draws: E = μ + σ·e_K with
e_K = E[max of K standard normals] (:func:`expected_normal_maximum`); a generator refitted to them has its
mean of s moved by σ·e_K (e_2 = 1/√π, e_3 = 3/(2√π)).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

MAX_BEST_OF = 1000


def candidate_groups(labels: Sequence[str], k: int) -> tuple[list[list[int]], list[int]]:
    """(groups of ``k`` positions into ``labels`` competing with each other, positions left out) — see the module.

    Groups come class by class (in order of first appearance), group g of a class before g + 1.
    """
    check_best_of(k)
    by_class: dict[str, list[int]] = {}
    for position, label in enumerate(labels):
        by_class.setdefault(label, []).append(position)
    groups: list[list[int]] = []
    left_out: list[int] = []
    for members in by_class.values():
        m = len(members) // k
        groups.extend([members[j * m + g] for j in range(k)] for g in range(m))
        left_out.extend(members[m * k:])
    return groups, sorted(left_out)


def choose_best(rewards: np.ndarray, groups: Sequence[Sequence[int]]) -> tuple[list[int], dict[int, int]]:
    """(the winner of each group, every grouped position's rank within its group: 1 = best). Ties: earlier wins."""
    winners: list[int] = []
    ranks: dict[int, int] = {}
    for group in groups:
        values = np.asarray([rewards[p] for p in group], dtype=np.float64)
        order = np.argsort(-values, kind="stable")  # stable: among equal rewards the earlier candidate first
        for rank, local in enumerate(order, start=1):
            ranks[group[int(local)]] = rank
        winners.append(group[int(order[0])])
    return winners, ranks


def check_best_of(k: int) -> int:
    """``k`` when it is a whole number in [1, :data:`MAX_BEST_OF`]; else a ``ValueError`` naming best_of."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_BEST_OF:
        raise ValueError(f"best_of must be a whole number from 1 to {MAX_BEST_OF}, got {k!r}")
    return int(k)


def expected_normal_maximum(k: int) -> float:
    """e_K = E[max of K independent standard normals] = ∫ x·K·φ(x)·Φ(x)^(K−1) dx, by adaptive quadrature."""
    from scipy import integrate
    from scipy.special import log_ndtr  # log Φ, accurate in the far left tail (scipy.stats is slow to import)

    check_best_of(k)
    if k == 1:
        return 0.0

    def density(x: float) -> float:
        return x * k * math.exp(-0.5 * x * x + (k - 1) * float(log_ndtr(x))) / math.sqrt(2 * math.pi)

    value, _ = integrate.quad(density, -math.inf, math.inf, epsabs=1e-12, epsrel=1e-10)
    return float(value)


__all__ = ["MAX_BEST_OF", "candidate_groups", "check_best_of", "choose_best", "expected_normal_maximum"]
