"""Holm's adjustment of findings' p-values, against statsmodels' multipletests on fixed numbers."""

import math

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from imgsynth.reports.findings import FINDINGS_COLUMNS, adjust, findings, holm, verdicts

FIXED = [0.01, 0.04, 0.03, 0.005, 0.20, 0.04, 0.8, 0.0001]


def test_holm_equals_statsmodels_on_fixed_numbers():
    expected = multipletests(FIXED, alpha=0.05, method="holm")[1]
    np.testing.assert_allclose(holm(FIXED), expected, rtol=0, atol=1e-15)
    # by hand for three: sorted 0.01, 0.02, 0.04 -> 3*0.01, max(0.03, 2*0.02), max(0.04, 0.04)
    np.testing.assert_allclose(holm([0.04, 0.01, 0.02]), [0.04, 0.03, 0.04])


def test_untested_rows_stay_nan_and_do_not_count_in_the_family():
    with_nan = [0.01, math.nan, 0.04, math.nan]
    got = holm(with_nan)
    assert np.isnan(got[1]) and np.isnan(got[3])
    np.testing.assert_allclose(got[[0, 2]], multipletests([0.01, 0.04], method="holm")[1])
    assert np.isnan(holm([math.nan])).all()


def _row(metric, class_name, p):
    return {"metric": metric, "extractor": "domain", "class": class_name, "statistic": "last", "generation": 2,
            "comparison": "replace − accumulate", "mean_difference": 1.0, "ci_low": 0.5, "ci_high": 1.5,
            "p_value": p, "test": "paired t-test", "n_seeds": 3}


def test_families_are_the_overall_rows_and_each_metrics_per_class_rows():
    rows = ([_row("fid", "all", p) for p in (0.01, 0.02)] + [_row("recall", "all", 0.03)]
            + [_row("fid", c, p) for c, p in zip("abc", (0.001, 0.02, 0.5))] + [_row("recall", "a", 0.04)])
    table = adjust(pd.DataFrame.from_records(rows))
    overall = table[table["class"] == "all"]
    assert set(overall["family"]) == {"overall"}
    np.testing.assert_allclose(overall["p_adjusted"], multipletests([0.01, 0.02, 0.03], method="holm")[1])
    fid = table[(table["class"] != "all") & (table["metric"] == "fid")]
    assert set(fid["family"]) == {"per-class fid[domain]"}
    np.testing.assert_allclose(fid["p_adjusted"], multipletests([0.001, 0.02, 0.5], method="holm")[1])
    assert table[table["family"] == "per-class recall[domain]"]["p_adjusted"].tolist() == [0.04]


def test_marks_come_from_adjusted_values_only():
    # raw p = 0.03 < 0.05 but three tests in the family: adjusted 0.09 -> no mark; 0.001 -> 0.003 -> a mark
    table = adjust(pd.DataFrame.from_records([_row("fid", "all", 0.001), _row("fid", "all", 0.03),
                                              _row("fid", "all", 0.04)]))
    lines = verdicts(table)
    assert lines[0].endswith("*") and "Holm-adjusted p = 0.003" in lines[0]
    assert not lines[1].endswith("*") and "p = 0.03" in lines[1]


def test_findings_table_has_p_adjusted_beside_p_value():
    frame = pd.DataFrame.from_records([
        {"run": "r", "seed": s, "mode": m, "generation": g, "class": "all", "metric": "fid", "extractor": "domain",
         "value": 10.0 + g * (3 if m == "replace" else 1) + 0.1 * s * s, "ci_low": None, "ci_high": None, "n": 10}
        for s in range(3) for m in ("replace", "accumulate") for g in range(3)])
    table = findings(frame)
    assert list(table.columns) == FINDINGS_COLUMNS
    assert FINDINGS_COLUMNS.index("p_adjusted") == FINDINGS_COLUMNS.index("p_value") + 1
    tested = table.dropna(subset=["p_value"])
    np.testing.assert_allclose(tested["p_adjusted"], multipletests(tested["p_value"], method="holm")[1])
