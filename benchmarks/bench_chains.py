"""Whole-run wall time of one recipe with its chains run serially, on local workers and on Ray, side by side.

Every configuration runs the same recipe into a fresh run folder (nothing cached between them except the
feature cache, which is pointed at a fresh folder per run) and must write the same metrics.csv values;
the script checks that and prints the wall times, the ratios against the serial run and the load
average before and after.

Usage::

    python benchmarks/bench_chains.py [--recipe digits-collapse] [--set loop.generations=3 ...]
        [--configs serial,workers2,ray1,ray2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from imgsynth.experiments.config import load_recipe
from imgsynth.experiments.loop import Experiment
from imgsynth.experiments.recipes import resolve_target
from imgsynth.reports.build import run_and_report

CONFIGS = {"serial": {"workers": 1, "backend": "local"}, "workers2": {"workers": 2, "backend": "local"},
           "ray1": {"workers": 1, "backend": "ray"}, "ray2": {"workers": 2, "backend": "ray"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="digits-collapse")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--configs", default="serial,workers2,ray1,ray2")
    args = parser.parse_args()
    recipe_path, _ = resolve_target(args.recipe)
    recipe = load_recipe(recipe_path, args.overrides)
    print(f"recipe {recipe_path.name} {' '.join(args.overrides)}; load average {os.getloadavg()[0]:.2f}")
    results: dict[str, tuple[float, pd.DataFrame]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            os.environ["IMGSYNTH_CACHE"] = str(Path(tmp) / f"cache-{name}")
            started = time.perf_counter()
            run_and_report(Experiment(recipe, Path(tmp) / name, progress=False, **CONFIGS[name]))
            seconds = time.perf_counter() - started
            values = pd.read_csv(Path(tmp) / name / "metrics.csv").drop(columns=["run"])
            results[name] = (seconds, values)
            print(f"  {name:9} {seconds:7.1f} s   (load average {os.getloadavg()[0]:.2f})", flush=True)
    serial_seconds, serial_values = results.get("serial", next(iter(results.values())))
    print(f"{'config':9} {'seconds':>8} {'vs serial':>10}  same metrics.csv values")
    for name, (seconds, values) in results.items():
        same = values.equals(serial_values)
        print(f"{name:9} {seconds:8.1f} {serial_seconds / seconds:9.2f}x  {same}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
