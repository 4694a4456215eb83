"""What `imgsynth run` prints: each distinct note once with its count (worker notes included), progress lines
when the output is not a terminal, the headline findings in words at the end; --quiet and --verbose."""

from __future__ import annotations

import html
import io
import re
import warnings

import pytest

from imgsynth.imageset import ImageSet
from imgsynth.notes import Note, NoteBoard
from imgsynth.progress import RunDisplay, RunMonitor, emit, in_process_events, task_events, task_scope
from imgsynth.terminal import NORMAL, QUIET, VERBOSE, level_from_flags, use_verbosity, verbosity

# Two modes, three seeds, three generations of a closed-form kind: seconds. 8x8 pixels (64 features) from 40
# samples: the Fréchet distance warns that its estimate is biased, in every generation.
RECIPE = """
name = "tiny"
seed = 0
[data]
source = "gaussian:classes=2,per_class=60,mean=128,sigma=20,spacing=40,seed=0"
size = 8
mode = "L"
test_fraction = 0.3
[generator]
kind = "gaussian"
per_class = 20
[loop]
generations = 3
modes = ["replace", "accumulate"]
seeds = 3
[metrics]
extractors = ["pixels"]
per_class = false
[classifier]
enabled = false
"""
BIASED = "fewer samples than feature dimensions"


def test_note_board_prints_each_distinct_note_once_and_counts_the_rest():
    stream = io.StringIO()
    board = NoteBoard(stream)
    with board.collecting():
        for _ in range(4):
            warnings.warn("the same thing\nin two lines", Note)
        warnings.warn("another thing", Note)
    assert stream.getvalue() == "note: the same thing\n  in two lines\nnote: another thing\n"
    assert board.summary_lines() == ["note: (3 more times) the same thing"]
    loud = NoteBoard(io.StringIO(), repeat=True)
    for _ in range(2):
        loud.add("again")
    assert loud._stream.getvalue().count("note: again") == 2  # --verbose: every occurrence


def test_verbosity_is_scoped_and_flags_exclude_each_other():
    assert verbosity() == NORMAL
    with use_verbosity(QUIET):
        assert verbosity() == QUIET
    assert verbosity() == NORMAL
    assert level_from_flags(False, True) == VERBOSE and level_from_flags(True, False) == QUIET
    with pytest.raises(ValueError, match="exclude"):
        level_from_flags(True, True)


def test_events_from_a_task_file_reach_the_display_as_plain_lines(tmp_path):
    """A worker's channel (its event file) read by the parent's monitor; a plain stream gets one line per
    finished generation with the counts, and notes go to the board."""
    out, notes = io.StringIO(), NoteBoard(io.StringIO())
    display = RunDisplay(level=NORMAL, stream=out, notes=notes.add)
    display.plan(["seed 0 gen 0", "seed 0 replace chain"], generations=3)
    with RunMonitor(tmp_path, display, interval=0.01):
        with task_events(tmp_path, "seed 0 replace chain"), task_scope("seed 0 replace chain"):
            emit("stage", stage="sample", key="seed 0 replace gen 1")
            for k in (1, 2):
                warnings.warn("biased, as every generation", Note)
                emit("generation", key=f"seed 0 replace gen {k}", seconds=1.5)
        with in_process_events(display), task_scope("seed 0 gen 0"):
            emit("generation", key="seed 0 gen 0", seconds=2.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(" done in " in line for line in lines)
    assert "chains 1/1 · generations 3/3" in lines[-1] or "generations 3/3" in lines[-1]
    assert notes.counts == {"biased, as every generation": 2}
    assert not (tmp_path / ".imgsynth-events").exists()  # the channel is removed after the run


def test_run_prints_each_note_once_progress_and_headline_findings(tmp_path, run_cli):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(RECIPE)
    code, out, err = run_cli("run", recipe, "--out", tmp_path / "run", "--workers", "2")
    assert code == 0, err
    # the note is raised in every generation, in two worker processes; it prints once, with its count
    printed = [line for line in err.splitlines() if BIASED in line]
    assert len(printed) == 2 and printed[0].startswith("note: fid for"), err
    more = int(re.search(r"note: \((\d+) more times\)", printed[1]).group(1))
    assert more == 3 * (1 + 2 * 2) + 1 - 1  # per seed gen 0 and two per chain; the real-data reference values
    assert "Note:" not in err and ".py:" not in err
    # plain progress lines (captured output is no terminal), then the findings in words, then the paths
    assert re.search(r"done in .* chains \d/6 · generations \d+/15", out), out
    head = out.index("Headline findings")
    assert re.search(r"fid\[pixels\] at generation 2: replace is [\d.e+-]+ (higher|lower) than accumulate", out)
    assert "95% interval of the difference" in out[head:] and "Holm-adjusted p = " in out[head:]
    assert re.search(r"^dashboard: ", out[head:], flags=re.M) and re.search(r"^findings: ", out[head:], flags=re.M)
    assert not (tmp_path / "run" / ".imgsynth-events").exists()
    # the report draws the lineage of this run's sets: the source and real train, then every generation's output
    page = html.unescape((tmp_path / "run" / "report.html").read_text())
    boxes = re.findall(r"<title>([^<]*)</title><rect", page)
    real = ImageSet.open(tmp_path / "run" / "real" / "train")
    assert f"{real.id}\nreal/train\nlicense: {real.manifest['license']['name']}" in boxes
    assert len(boxes) == 2 + 3 * (1 + 2 * 2) and sum("license: generated" in b for b in boxes) == 15

    code, quiet, err = run_cli("run", tmp_path / "run", "--quiet")  # finished: reports only
    assert code == 0 and "Headline findings" not in quiet and "[imgsynth]" not in quiet
    assert quiet.splitlines()[0].startswith("dashboard: ")


@pytest.mark.parametrize("args", [("run", "smoke", "--quiet", "--verbose"), ("--quiet", "--verbose", "run", "smoke")])
def test_quiet_and_verbose_together_are_a_usage_error_and_nothing_written(tmp_path, run_cli, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(*args)  # a usage error, as --backend's: typer's message, exit status 2
    assert code == 2 and out == ""
    assert "--quiet and --verbose exclude each other" in " ".join(err.replace("│", " ").split())
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
