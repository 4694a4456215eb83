"""A metric is declared once (``imgsynth.metrics.registry``): a throwaway metric registered here reaches
`imgsynth metrics`, a run's metrics.csv, its dashboard panels and its findings with no edit anywhere else."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from imgsynth.imageset import ImageSet
from imgsynth.metrics.registry import (CAPTIONS, FEATURES, LOWER, METRICS, TEXT_ENCODER, Metric, MetricFamily,
                                       MetricSettings)
from imgsynth.registry import RegistryError

NAME = "test_brightness_gap"


def brightness_gap(settings: MetricSettings, candidate: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """|mean feature of the candidate − mean feature of the reference| (0 for a set against itself)."""
    return {NAME: float((candidate.double().mean() - reference.double().mean()).abs())}


GAP = Metric(MetricFamily(brightness_gap, two_sample=True, min_candidate=2, min_reference=2), LOWER,
             bounds=(0.0, math.inf), headline=99)


@pytest.fixture
def gap_metric():
    with METRICS.registered(NAME, GAP) as metric:
        yield metric
    assert NAME not in METRICS


def _mean_pixel(image_set: ImageSet) -> float:
    return float(image_set.as_array().astype(np.float64).mean() / 255.0)


# --------------------------------------------------------------------------------------------- imgsynth metrics

def test_a_registered_metric_is_computed_by_imgsynth_metrics_with_intervals_inside_its_bounds(
        gap_metric, digits_sets, run_cli, tmp_path):
    train, test = digits_sets
    out = tmp_path / "m.csv"
    # Asked among built-in two-sample and one-sample metrics, so its place in the table shows too.
    code, printed, err = run_cli("metrics", test.root, train.root, "--features", "pixels", "--out", out,
                                 "--per-class", "--bootstrap", "20", "--cache-dir", tmp_path / "cache",
                                 "--metrics", f"diversity,{NAME},coverage,fid")  # the table orders them itself
    assert code == 0, err
    frame = pd.read_csv(out)
    rows = frame[frame["metric"] == NAME].set_index("class")
    assert list(rows.index) == ["all", *test.classes]  # overall, then per class, like every metric
    assert rows.loc["all", "value"] == pytest.approx(abs(_mean_pixel(train) - _mean_pixel(test)), rel=1e-6)
    assert (rows["ci_low"] <= rows["value"]).all() and (rows["value"] <= rows["ci_high"]).all()
    assert NAME in printed
    # Two-sample metrics come before the one-sample ones: the new one follows the built-in two-sample ones.
    order = list(dict.fromkeys(frame["metric"]))
    assert order.index("cmmd" if "cmmd" in order else "coverage") < order.index(NAME) < order.index("diversity")

    # A set against itself: the gap is 0 and its recentred interval, which would reach below 0, is clipped
    # at the declared lower bound.
    same = tmp_path / "same.csv"
    code, _, err = run_cli("metrics", train.root, train.root, "--features", "pixels", "--out", same,
                           "--metrics", NAME, "--bootstrap", "20", "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    row = pd.read_csv(same).set_index("metric").loc[NAME]
    assert row["value"] == 0.0 and row["ci_low"] == 0.0 and row["ci_high"] > 0.0


def test_without_the_registration_the_metric_is_unknown(digits_sets, run_cli, tmp_path):
    train, test = digits_sets
    code, _, err = run_cli("metrics", test.root, train.root, "--features", "pixels", "--out", tmp_path / "m.csv",
                           "--metrics", NAME, "--cache-dir", tmp_path / "cache")
    assert code != 0 and f"unknown metrics ['{NAME}']" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------- a run

def test_a_registered_metric_reaches_metrics_csv_the_dashboard_and_the_findings(gap_metric, run_cli, tmp_path,
                                                                                monkeypatch):
    from matplotlib.axes import Axes

    titles: list[str] = []
    set_title = Axes.set_title

    def recording(self, label, *args, **kwargs):
        titles.append(str(label))
        return set_title(self, label, *args, **kwargs)

    monkeypatch.setattr(Axes, "set_title", recording)
    run = tmp_path / "run"
    code, _, err = run_cli("run", "gaussian-theory", "--out", run, "--workers", "1", "--set", "loop.seeds=2",
                           "--set", "loop.generations=2")
    assert code == 0, err
    frame = pd.read_csv(run / "metrics.csv")
    gap = frame[frame["metric"] == NAME]
    assert set(gap["extractor"]) == {"pixels"} and set(gap["generation"]) == {0, 1} and set(gap["seed"]) == {0, 1}
    # Its panel, with the arrow its declared direction gives, after the built-in panels (registration order).
    panels = [t for t in titles if "[pixels]" in t]
    assert f"{NAME}[pixels] ↓" in panels
    assert panels.index(f"{NAME}[pixels] ↓") > panels.index("fid[pixels] ↓")
    # Declared a headline: a verdict line in the report, after fid's (its rank, 99, is later).
    html = (run / "report.html").read_text()
    assert f"replace {NAME}[pixels] since gen 0" in html
    assert html.index(f"{NAME}[pixels] since gen 0") > html.index("fid[pixels] since gen 0")
    findings = pd.read_csv(run / "findings.csv")
    assert NAME in set(findings["metric"])


def test_headlines_panels_and_directions_are_read_from_the_declarations(gap_metric):
    from imgsynth.reports import figures, findings

    table = pd.DataFrame.from_records([
        {"metric": metric, "extractor": "pixels", "class": "all", "statistic": "change", "generation": 1,
         "comparison": "replace: gen 1 − gen 0", "mean_difference": 0.5, "ci_low": 0.1, "ci_high": 0.9,
         "p_value": 0.01, "test": "paired t-test", "n_seeds": 3} for metric in (NAME, "vendi", "fid")])
    lines = findings.verdicts(table)
    assert [line.split()[1] for line in lines] == ["fid[pixels]", f"{NAME}[pixels]"]  # vendi is no headline
    assert figures.panel_title(NAME, "pixels") == f"{NAME}[pixels] ↓"


# --------------------------------------------------------------------------------------------- refusals

def test_registering_a_taken_metric_name_is_refused_naming_both():
    with pytest.raises(RegistryError, match="metric 'fid' is already registered"):
        METRICS.register("fid", GAP)
    assert METRICS["fid"].family is not GAP.family


def test_a_declaration_is_checked_when_it_is_made():
    with pytest.raises(ValueError, match="direction must be one of"):
        Metric(None, "up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bounds must be"):
        Metric(None, LOWER, bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="unknown needs"):
        MetricFamily(brightness_gap, two_sample=True, needs=frozenset({FEATURES, "pixels"}))


def _text_metric(settings, candidate, candidate_text):
    return {"test_text_alignment": float((candidate * candidate_text).sum(dim=1).mean())}


def test_a_metric_needing_a_text_encoder_is_left_out_for_other_extractors_and_refused_when_asked(
        digits_sets, run_cli, tmp_path):
    declaration = Metric(MetricFamily(_text_metric, two_sample=False,
                                      needs=frozenset({FEATURES, TEXT_ENCODER, CAPTIONS})))
    train, test = digits_sets
    with METRICS.registered("test_text_alignment", declaration):
        code, _, err = run_cli("metrics", test.root, train.root, "--features", "pixels", "--out", tmp_path / "m.csv",
                               "--cache-dir", tmp_path / "cache")
        assert code == 0, err
        assert "test_text_alignment" not in set(pd.read_csv(tmp_path / "m.csv")["metric"])
        assert "test_text_alignment" not in err  # not the caller's fault: no note
        code, _, err = run_cli("metrics", test.root, train.root, "--features", "pixels", "--out",
                               tmp_path / "m.csv", "--metrics", "test_text_alignment", "--cache-dir", tmp_path / "cache")
        assert code != 0
        assert "test_text_alignment need CLIP embeddings; extractor 'pixels' supplies no text encoder" in err


def test_with_a_text_encoder_but_no_captions_the_metric_is_skipped_with_a_note():
    from imgsynth.metrics.evaluate import EvaluationNote, evaluate_features

    declaration = Metric(MetricFamily(_text_metric, two_sample=False,
                                      needs=frozenset({FEATURES, TEXT_ENCODER, CAPTIONS})))
    features = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = ["a"] * 6
    kwargs = dict(candidate_labels=labels, reference_labels=labels, extractor="clip:x", per_class=False,
                  supplies=frozenset({FEATURES, TEXT_ENCODER}))
    with METRICS.registered("test_text_alignment", declaration):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = evaluate_features(features, features, **kwargs)
        assert "test_text_alignment" not in {r.metric for r in rows}
        assert any("test_text_alignment skipped: no text embeddings" in str(w.message) for w in caught
                   if issubclass(w.category, EvaluationNote))
        rows = evaluate_features(features, features, candidate_text=features.flip(0), **kwargs)
        value = next(r.value for r in rows if r.metric == "test_text_alignment")
        assert value == pytest.approx(float((features * features.flip(0)).sum(dim=1).mean()))


def test_diversity_is_named_by_what_the_extractor_supplies():
    from imgsynth.metrics.evaluate import evaluate_features

    features = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    labels = ["a"] * 8
    common = dict(candidate_labels=labels, reference_labels=labels, extractor="x", per_class=False)
    for supplies, name in (({FEATURES}, "diversity"), ({FEATURES, TEXT_ENCODER}, "clip_diversity")):
        for asked in (None, ["diversity"], ["clip_diversity"]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows = evaluate_features(features, features, supplies=supplies, metrics=asked, **common)
            names = {r.metric for r in rows}
            assert name in names and ({"diversity", "clip_diversity"} - {name}).isdisjoint(names)


def test_the_registries_import_no_torch_and_metrics_no_higher_layer():
    import subprocess
    import sys

    code = ("import sys, imgsynth.metrics.registry, imgsynth.metrics.extractors, imgsynth.experiments.config\n"
            "assert 'torch' not in sys.modules, 'torch'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    higher = ("imgsynth.pipelines", "imgsynth.experiments", "imgsynth.reports", "imgsynth.cli")
    code = ("import sys, imgsynth.metrics.evaluate, imgsynth.metrics.features, imgsynth.metrics.families\n"
            f"bad = sorted(m for m in sys.modules if m.startswith({higher!r}))\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_recipes_accept_a_registered_extractor_name(tmp_path):
    from imgsynth.experiments.config import RecipeError, recipe_from_dict
    from imgsynth.metrics.extractors import EXTRACTORS

    data = {"name": "x", "metrics": {"extractors": ["test-extractor:abc"]}}
    with pytest.raises(RecipeError, match="unknown extractor 'test-extractor:abc'"):
        recipe_from_dict(data)
    with EXTRACTORS.registered("test-extractor", "imgsynth.metrics.extractors.pixels:PixelExtractor"):
        assert recipe_from_dict(data).metrics.extractors == ["test-extractor:abc"]


def test_drawing_the_reports_leaves_matplotlibs_backend_and_pyplot_alone(tmp_path):
    """A notebook that imports the reports keeps its backend: figures are bare Figure objects."""
    import os
    import subprocess
    import sys

    code = ("import sys, numpy as np, matplotlib\n"
            "from imgsynth.reports import build, figures\n"
            f"figures.sample_grid([('row', [np.zeros((4, 4), np.uint8)])], {str(tmp_path / 'g.png')!r})\n"
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MPLBACKEND": "svg"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
