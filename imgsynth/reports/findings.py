"""How sure each number is: intervals over seeds, paired tests between modes, and plain-language verdicts.

Replicates (seeds) are the unit of uncertainty: a seed redraws generator weights, training noise,
samples and classifiers, while the real data stays fixed. For every (mode, generation, metric) the
dashboard draws the mean over seeds with a 95 % **Student-t interval over seeds**
(mean ± t₀.₉₇₅,ₙ₋₁ · s/√n). Differences between two modes are **paired by seed** (seed s of one mode
against seed s of the other) and tested with the **paired t-test** (``scipy.stats.ttest_rel``), whose
95 % interval is the t-interval of the per-seed differences; a mode's change since generation 0 is
the same paired comparison of its last generation against its generation 0. The whole curve is
summarised per seed by its area under the curve (trapezoid rule over generations), compared the same
way. With one seed there is no spread to estimate: no interval or p-value is given.

A run tests many differences at once, so p-values are **adjusted for multiple comparisons** with Holm's
step-down method (which controls the family-wise error rate under any dependence between the tests) and
only adjusted values earn a significance mark. The *family* adjusted together is one run's overall
comparisons (class ``all``: the headline findings), and, separately, each metric's per-class comparisons
(``per-class fid[domain]``): per-class rows are exploratory, and pooling hundreds of them with the overall
rows would bury the headline findings. An exact-theory run's rows of measured vs closed form (statistic
``theory``) are a family of their own. ``findings.csv`` names each row's family in its ``family`` column.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from imgsynth.metrics.registry import HIGHER, LOWER, bookkeeping_metrics, direction, headline_metrics
from imgsynth.reports.tables import metric_label

CONFIDENCE = 0.95
TEST_NAME = "paired t-test"
SEED_INTERVAL = "95% t-interval over seeds"
KEYS = ["run", "mode", "generation", "class", "metric", "extractor"]
# Which metrics get a verdict line (in which order), and which rows describe the run rather than measure it
# (no findings for them), come from each metric's declaration: imgsynth.metrics.registry (headline,
# bookkeeping).
FINDINGS_COLUMNS = ["metric", "extractor", "class", "statistic", "generation", "comparison", "mean_difference",
                    "ci_low", "ci_high", "p_value", "p_adjusted", "test", "n_seeds", "family"]
ALPHA = 0.05
ADJUSTMENT = "Holm"
OVERALL_FAMILY = "overall"
# Rows of measured vs closed form (exact-theory kinds only, so other runs' findings keep their columns):
# statistic "theory", mean_difference = mean over seeds − theory, its t-interval, the one-sample t-test's
# p-value, and the z-score (mean − theory) / (s/√n).
THEORY_STATISTIC = "theory"
THEORY_TEST = "one-sample t-test"
THEORY_COLUMNS = ["theory", "z_score"]
# Measured vs closed form asks another question than mode vs mode: its rows are their own Holm family.
THEORY_FAMILY = "theory"


@dataclass(frozen=True)
class Interval:
    """A mean with its 95 % t-interval over ``n`` values (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int


@functools.lru_cache(maxsize=256)
def _t_critical(confidence: float, df: int) -> float:
    """t_{(1+c)/2, df}, remembered: a report asks for the same few thousands of times, and scipy's ppf costs
    milliseconds a call."""
    from scipy import stats

    return stats.t.ppf((1 + confidence) / 2, df)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student-t interval: mean ± t_{(1+c)/2, n−1} · s / √n (s the sample standard deviation)."""
    array = np.asarray(values, dtype=np.float64)
    n = int(array.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(array.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(_t_critical(confidence, n - 1) * array.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of a − b over paired seeds, its 95 % interval and the paired t-test's two-sided p-value."""

    difference: Interval
    p_value: float


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """Compare two paired samples (same seeds, same order) with the paired t-test."""
    from scipy import stats

    a_array, b_array = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_array.shape != b_array.shape:
        raise ValueError(f"paired samples need the same length, got {a_array.size} and {b_array.size}")
    difference = t_interval(a_array - b_array)
    if difference.n < 2:
        return PairedDifference(difference, math.nan)
    # Identical differences (e.g. a count that never changes, or an accuracy that moves by the same test
    # image in every seed) have no spread, so there is no t-test: scipy returns NaN for exactly equal ones, but
    # differences equal up to float rounding (0.6 - 0.59721 in one seed, 0.5 - 0.49721 in another) give a
    # spread of 1e-17 and t ~ 1e14, a p-value of 1e-29 that marks a non-test "significant". Within a relative
    # 1e-9 of each other they count as identical.
    spread = float(np.ptp(a_array - b_array))
    if spread <= 1e-9 * float(np.max(np.abs(a_array - b_array))):
        return PairedDifference(difference, math.nan)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = float(stats.ttest_rel(a_array, b_array).pvalue)
    return PairedDifference(difference, p_value)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order; NaN entries (no test) stay NaN and do not count
    in the family.

    With the m valid p-values sorted ascending, p₍ᵢ₎ (i = 1…m) becomes max over j ≤ i of min(1, (m − j + 1)·p₍ⱼ₎).
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return adjusted
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def family_of(metric: str, extractor: str, class_name: str) -> str:
    """The family a finding is adjusted with: ``overall``, or ``per-class <metric[extractor]>``."""
    return OVERALL_FAMILY if class_name == "all" else f"per-class {metric_label(metric, extractor)}"


def adjust(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``family`` and ``p_adjusted`` (Holm within each family, and within each run when the
    table holds several) filled in."""
    table = table.copy()
    table["family"] = [THEORY_FAMILY if statistic == THEORY_STATISTIC else family_of(m, e, c)
                       for m, e, c, statistic in zip(table["metric"], table["extractor"], table["class"],
                                                     table["statistic"])]
    table["p_adjusted"] = np.nan
    groups = ["run", "family"] if "run" in table.columns else ["family"]
    for _, group in table.groupby(groups, sort=False):
        table.loc[group.index, "p_adjusted"] = holm(group["p_value"].astype(float).to_numpy())
    return table


def significant(row: pd.Series | dict) -> bool:
    """Whether a finding is significant at ``ALPHA`` after the adjustment (never from the raw p-value)."""
    value = row.get("p_adjusted")
    return value is not None and bool(value < ALPHA)


def seed_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (run, mode, generation, class, metric, extractor): mean over seeds, its t-interval over seeds,
    the number of seeds, and the mean of the per-seed bootstrap-over-samples bounds (where computed)."""
    records = []
    for key, group in frame.groupby(KEYS, sort=False, dropna=False):
        interval = t_interval(group["value"].astype(float).to_numpy())
        record = dict(zip(KEYS, key))
        record.update(mean=interval.mean, seed_low=interval.low, seed_high=interval.high, n_seeds=interval.n,
                      sample_low=pd.to_numeric(group["ci_low"], errors="coerce").mean(),
                      sample_high=pd.to_numeric(group["ci_high"], errors="coerce").mean())
        records.append(record)
    return pd.DataFrame.from_records(records)


class _SeedValues:
    """Each (mode, generation, metric, extractor, class)'s values by seed, grouped once: findings asks for
    thousands of them, and filtering the whole table for each one took seconds on the default run. A key
    with a missing part (NaN) matches nothing, as an equality filter would."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._empty = frame.iloc[0:0].set_index("seed")["value"].astype(float)
        groups = frame.groupby(["mode", "generation", "metric", "extractor", "class"], sort=False)
        self._groups = {key: group.set_index("seed")["value"].astype(float) for key, group in groups}

    def __call__(self, mode: str, generation: int, keys: tuple[str, str, str]) -> pd.Series:
        """The values of (metric, extractor, class) ``keys`` of ``mode`` at ``generation``, indexed by seed."""
        return self._groups.get((mode, generation, *keys), self._empty)


def _auc_per_seed(values: _SeedValues, mode: str, last: int, keys: tuple[str, str, str]) -> pd.Series:
    curves = pd.DataFrame({g: values(mode, g, keys) for g in range(last + 1)}).dropna()
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 names it trapz
    return pd.Series({seed: float(trapezoid(row.to_numpy(), dx=1.0)) for seed, row in curves.iterrows()},
                     dtype=float)


def _finding(a: pd.Series, b: pd.Series, **fields: object) -> dict | None:
    seeds = a.index.intersection(b.index)
    if len(seeds) == 0:
        return None
    result = paired_difference(a.loc[seeds].to_numpy(), b.loc[seeds].to_numpy())
    d = result.difference
    return {**fields, "mean_difference": d.mean, "ci_low": d.low, "ci_high": d.high, "p_value": result.p_value,
            "test": TEST_NAME if d.n >= 2 else "", "n_seeds": d.n}


def theory_frame(theory: Mapping[str, Any]) -> pd.DataFrame:
    """``theory.json``'s derived expectations as rows (mode, generation, metric, theory); empty without any."""
    records = [{"mode": mode, "generation": g, "metric": metric, "theory": float(value)}
               for mode, entry in theory.get("modes", {}).items() if entry.get("derived")
               for metric in theory.get("metrics", []) for g, value in enumerate(entry.get(metric, []))]
    return pd.DataFrame.from_records(records, columns=["mode", "generation", "metric", "theory"])


def theory_findings(frame: pd.DataFrame, theory: pd.DataFrame) -> pd.DataFrame:
    """Measured vs closed form for every (mode, generation ≥ 1, metric) of ``theory``: the mean over seeds minus
    the theory, its t-interval over seeds, the one-sample t-test and the z-score (difference over s/√n)."""
    from scipy import stats

    rows = []
    per_seed = _SeedValues(frame)
    for row in theory.itertuples(index=False):
        if row.generation == 0:
            continue  # generation 0 fits the real data itself: no spread over seeds to compare with
        values = per_seed(row.mode, row.generation, (row.metric, "", "all")).dropna().to_numpy()
        if not len(values):
            continue
        d = t_interval(values - row.theory)
        spread = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
        z = d.mean / spread if spread > 0 else math.nan
        p = float(stats.ttest_1samp(values, row.theory).pvalue) if spread > 0 else math.nan
        rows.append({"metric": row.metric, "extractor": "", "class": "all", "statistic": THEORY_STATISTIC,
                     "generation": int(row.generation), "comparison": f"{row.mode}: measured − theory",
                     "mean_difference": d.mean, "ci_low": d.low, "ci_high": d.high, "p_value": p,
                     "test": THEORY_TEST if len(values) > 1 else "", "n_seeds": d.n, "theory": row.theory,
                     "z_score": z})
    return pd.DataFrame.from_records(rows, columns=FINDINGS_COLUMNS + THEORY_COLUMNS)


def findings(frame: pd.DataFrame, theory: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every metric (overall and per class) of one run: each pair of modes at the last generation and over the
    whole curve (AUC), and each mode's change from generation 0 to the last generation; with ``theory``
    (:func:`theory_frame`) also every measurement that has a closed form against it (:func:`theory_findings`)."""
    rows: list[dict] = []
    frame = frame[~frame["metric"].isin(bookkeeping_metrics())]
    if frame.empty:
        return pd.DataFrame(columns=FINDINGS_COLUMNS)
    last = int(frame["generation"].max())
    modes = list(dict.fromkeys(frame["mode"]))
    keys = sorted({(m, e, c) for m, e, c in zip(frame["metric"], frame["extractor"], frame["class"])},
                  key=lambda k: (k[2] != "all", k))
    per_seed = _SeedValues(frame)
    for key in keys:
        base = dict(metric=key[0], extractor=key[1], **{"class": key[2]})
        for a, b in combinations(modes, 2):
            for statistic, series_a, series_b in (
                    ("last", per_seed(a, last, key), per_seed(b, last, key)),
                    ("auc", _auc_per_seed(per_seed, a, last, key), _auc_per_seed(per_seed, b, last, key))):
                found = _finding(series_a, series_b, **base, statistic=statistic, generation=last,
                                 comparison=f"{a} − {b}")
                if found:
                    rows.append(found)
        for mode in modes:
            found = _finding(per_seed(mode, last, key), per_seed(mode, 0, key), **base,
                             statistic="change", generation=last, comparison=f"{mode}: gen {last} − gen 0")
            if found:
                rows.append(found)
    table = pd.DataFrame.from_records(rows, columns=FINDINGS_COLUMNS)
    columns = FINDINGS_COLUMNS
    if theory is not None and not theory.empty:  # exact-theory runs: measured vs closed form, with z-scores
        table = pd.concat([table, theory_findings(frame, theory)], ignore_index=True)
        columns = FINDINGS_COLUMNS + THEORY_COLUMNS
    return adjust(table)[columns]


def _number(value: float) -> str:
    return f"{value:+.3g}" if abs(value) < 1000 else f"{value:+.0f}"


def verdicts(table: pd.DataFrame) -> list[str]:
    """One plain-language line per headline metric (in their declared rank) and comparison (overall, last
    generation), e.g.
    ``replace − accumulate fid[domain] at gen 4: +5.1 [3.2, 7.0], p = 0.004 (3 seeds, paired t-test)``."""
    if table.empty:
        return []
    if int(table["n_seeds"].max()) < 2:
        return ["Intervals and tests need at least 2 seeds; this run has 1. Set [loop] seeds = 3 (or more) "
                "and run again to know which differences are larger than seed-to-seed noise."]
    lines = []
    overall = table[(table["class"] == "all") & (table["statistic"].isin(["last", "change"]))]
    for metric in headline_metrics():
        for _, row in overall[overall["metric"] == metric].iterrows():
            label = metric_label(row["metric"], row["extractor"])
            where = f"at gen {row['generation']}" if row["statistic"] == "last" else "since gen 0"
            comparison = row["comparison"].split(":")[0] if row["statistic"] == "change" else row["comparison"]
            adjusted = row.get("p_adjusted")
            shown = f", {ADJUSTMENT}-adjusted p = {adjusted:.2g}" if adjusted is not None and adjusted == adjusted else ""
            lines.append(f"{comparison} {label} {where}: {_number(row['mean_difference'])} "
                         f"[{row['ci_low']:.3g}, {row['ci_high']:.3g}], p = {row['p_value']:.2g}{shown} "
                         f"({row['n_seeds']} seeds, {row['test']}){' *' if significant(row) else ''}")
    return lines + theory_lines(table)


def theory_lines(table: pd.DataFrame) -> list[str]:
    """Measured vs closed form at the last generation, one line per (mode, metric), e.g. ``replace
    fit_variance_ratio at gen 4: measured 0.727 [0.637, 0.816], closed form 0.815, z = -2.20 (12 seeds)``."""
    lines: list[str] = []
    if "z_score" in table.columns:  # measured vs closed form at the last generation
        last = table[table["statistic"] == THEORY_STATISTIC]
        last = last[last["generation"] == last["generation"].max()] if not last.empty else last
        for _, row in last.iterrows():
            measured = row["theory"] + row["mean_difference"]
            lines.append(f"{row['comparison'].split(':')[0]} {row['metric']} at gen {row['generation']}: measured "
                         f"{measured:.4g} [{row['theory'] + row['ci_low']:.4g}, {row['theory'] + row['ci_high']:.4g}], "
                         f"closed form {row['theory']:.4g}, z = {row['z_score']:+.2f} ({row['n_seeds']} seeds)")
    return lines


def _judgement(metric: str, difference: float) -> str:
    """``better`` / ``worse`` for a difference in a metric with a declared direction, else ``""``."""
    way = direction(metric)
    if way not in (HIGHER, LOWER) or difference == 0:
        return ""
    return "better" if (difference > 0) == (way == HIGHER) else "worse"


def plain_findings(table: pd.DataFrame, limit: int = 12) -> list[str]:
    """The headline findings in plain words, with their intervals (what ``imgsynth run`` ends with), e.g.
    ``fid[domain] at generation 4: replace is 5.1 higher than accumulate (worse; 95% interval of the difference
    3.2 to 7.0, Holm-adjusted p = 0.01, 3 seeds): significant``. At most ``limit`` lines, significant ones
    first, then in the metrics' declared headline order; a last line says how many more are in findings.csv."""
    if table.empty:
        return ["No comparisons (one mode, or no finished generation)."]
    if int(pd.to_numeric(table["n_seeds"]).max()) < 2:
        return verdicts(table)
    overall = table[(table["class"] == "all") & (table["statistic"].isin(["last", "change"]))]
    ranked: list[tuple[int, int, str]] = []
    for rank, metric in enumerate(headline_metrics()):
        for _, row in overall[overall["metric"] == metric].iterrows():
            label = metric_label(row["metric"], row["extractor"] if isinstance(row["extractor"], str) else "")
            difference = float(row["mean_difference"])
            size = f"{abs(difference):.3g}"
            if row["statistic"] == "last":
                a, b = str(row["comparison"]).split(" − ")
                what = (f"{label} at generation {row['generation']}: {a} is {size} "
                        f"{'higher' if difference > 0 else 'lower'} than {b}" if difference else
                        f"{label} at generation {row['generation']}: {a} equals {b}")
            else:
                mode = str(row["comparison"]).split(":")[0]
                what = (f"{label} of {mode}: {'rose' if difference > 0 else 'fell'} by {size} from generation 0 "
                        f"to {row['generation']}" if difference else f"{label} of {mode}: unchanged since generation 0")
            judged = _judgement(metric, difference)
            adjusted = row.get("p_adjusted")
            tested = adjusted is not None and adjusted == adjusted
            detail = (f"95% interval of the difference {row['ci_low']:.3g} to {row['ci_high']:.3g}, "
                      + (f"{ADJUSTMENT}-adjusted p = {adjusted:.2g}, " if tested else "no test, ")
                      + f"{int(row['n_seeds'])} seeds")
            verdict = ("significant" if significant(row) else "not significant after adjustment" if tested
                       else "untested")
            ranked.append((0 if significant(row) else 1, rank,
                           f"{what} ({judged + '; ' if judged else ''}{detail}): {verdict}"))
    lines = [text for _, _, text in sorted(ranked, key=lambda r: (r[0], r[1]))]
    if len(lines) > limit:
        lines = lines[:limit] + [f"… and {len(lines) - limit} more headline comparisons in findings.csv"]
    theory = table[table["statistic"] == THEORY_STATISTIC] if "z_score" in table.columns else table.iloc[:0]
    if not theory.empty:  # an exact-theory run: how far the measurements lie from their closed forms
        z = pd.to_numeric(theory["z_score"], errors="coerce").dropna()
        flagged = int(theory.apply(significant, axis=1).sum())
        lines.append(f"measured vs closed form: {len(theory)} comparisons, z from {z.min():+.2f} to {z.max():+.2f}, "
                     f"{flagged} significant after {ADJUSTMENT} adjustment (rows 'theory' in findings.csv)"
                     if len(z) else f"measured vs closed form: {len(theory)} comparisons (rows 'theory' in findings.csv)")
    return lines
