"""Metrics benchmarks, side by side with the reference implementations in one run.

* Fréchet distance at d = 2048 from the same (mu, sigma): imgsynth vs pytorch-fid's
  ``calculate_frechet_distance`` (scipy ``sqrtm``). Goal: ≥ 10× faster, equal to 1e-6 relative.
* Precision/recall/density/coverage at n × n: imgsynth vs the ``prdc`` package, time and peak extra
  memory. Goal: ≥ 3× faster with ≤ 1 GiB extra memory.

Each PRDC implementation runs in its own subprocess on features loaded from a .npy file, so peak memory
is measured honestly: after loading, the process's peak-RSS counter is reset (/proc/self/clear_refs)
and the reported figure is the new peak minus the resident size at that moment (on CUDA, also
``torch.cuda.max_memory_allocated``). Features are synthetic but shaped like CNN pool features
(non-negative, low-rank structure plus noise). Sizes are flags, so a busy machine can run a smaller case:

    python benchmarks/bench_metrics.py                       # full size (prdc takes minutes)
    python benchmarks/bench_metrics.py --prdc-n 3000 --fd-n 5000
    python benchmarks/bench_metrics.py --device cuda --skip-reference
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Non-negative features with a low-rank shared structure, like Inception pool activations."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(1234).standard_normal((64, d)) / 8
    x = rng.standard_normal((n, 64)) @ basis + 0.5 * rng.standard_normal((n, d)) + 0.3 + shift
    return np.maximum(x, 0).astype(np.float32)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- FD

def bench_frechet(n: int, d: int, device: str, skip_reference: bool) -> None:
    import torch

    from imgsynth.metrics.distances import feature_statistics, frechet_distance, frechet_distance_from_statistics

    a = synthetic_features(n, d, seed=1)
    b = synthetic_features(n, d, seed=2, shift=0.05)
    start = time.perf_counter()
    mu1, sigma1 = feature_statistics(torch.from_numpy(a).to(device))
    mu2, sigma2 = feature_statistics(torch.from_numpy(b).to(device))
    stats_time = time.perf_counter() - start
    rows = [["Fréchet distance", f"n={n} d={d}", "seconds", "value", "speed-up", "rel. diff"]]

    def timed(fn):
        start = time.perf_counter()
        value = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return value, time.perf_counter() - start

    # Warm up both (lazy library loading, thread pools) on a small case, untimed.
    small = torch.eye(8, dtype=torch.float64, device=device)
    frechet_distance_from_statistics(small[0], small, small[1], 2 * small)
    ours, ours_time = timed(lambda: frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2))
    end_to_end, end_to_end_time = timed(lambda: frechet_distance(torch.from_numpy(a).to(device),
                                                                 torch.from_numpy(b).to(device)))
    reference, reference_time = None, None
    if not skip_reference:
        from pytorch_fid.fid_score import calculate_frechet_distance

        np_stats = [t.cpu().numpy() for t in (mu1, sigma1, mu2, sigma2)]
        calculate_frechet_distance(np.zeros(8), np.eye(8), np.ones(8), 2 * np.eye(8))
        reference, reference_time = timed(lambda: float(calculate_frechet_distance(*np_stats)))
    rows.append(["pytorch-fid calculate_frechet_distance", "from (mu, sigma)",
                 f"{reference_time:.2f}" if reference_time else "skipped",
                 f"{reference:.10g}" if reference is not None else "", "1.0×" if reference_time else "", ""])
    for name, value, seconds in (("imgsynth frechet_distance_from_statistics", ours, ours_time),):
        rows.append([name, f"from (mu, sigma), {device}", f"{seconds:.2f}", f"{value:.10g}",
                     f"{reference_time / seconds:.1f}×" if reference_time else "",
                     f"{abs(value - reference) / abs(reference):.1e}" if reference is not None else ""])
    rows.append(["imgsynth frechet_distance", f"from features, {device}", f"{end_to_end_time:.2f}",
                 f"{end_to_end:.10g}", "", f"{abs(end_to_end - reference) / abs(reference):.1e}"
                 if reference is not None else ""])
    print(table(rows))
    print(f"(feature statistics for both sets, not timed above: {stats_time:.2f} s)\n")


# --------------------------------------------------------------------------------------------- PRDC

CHILD = r"""
import json, os, sys, time
import numpy as np
impl, real_path, fake_path, k, device = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
if impl == "prdc":
    import contextlib, io
    from prdc import compute_prdc
else:
    import torch
    from imgsynth.metrics.fidelity import precision_recall_density_coverage

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
real, fake = np.load(real_path), np.load(fake_path)
if impl != "prdc":
    real_t, fake_t = torch.from_numpy(real).to(device), torch.from_numpy(fake).to(device)
    precision_recall_density_coverage(real_t[:64], fake_t[:64], k)  # load kernels, not timed
    if device.startswith("cuda"):
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
baseline = status("VmRSS:")
start = time.perf_counter()
if impl == "prdc":
    with contextlib.redirect_stdout(io.StringIO()):
        result = compute_prdc(real, fake, k)
else:
    result = precision_recall_density_coverage(real_t, fake_t, k)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
seconds = time.perf_counter() - start
gpu = torch.cuda.max_memory_allocated() if impl != "prdc" and device.startswith("cuda") else 0
print(json.dumps({"seconds": seconds, "extra_rss": status("VmHWM:") - baseline, "gpu_peak": gpu,
                  "result": {k: float(v) for k, v in result.items()}}))
"""


def run_child(impl: str, real: Path, fake: Path, k: int, device: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, impl, str(real), str(fake), str(k), device],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{impl} benchmark failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_prdc(n: int, d: int, k: int, device: str, skip_reference: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        real, fake = Path(folder) / "real.npy", Path(folder) / "fake.npy"
        np.save(real, synthetic_features(n, d, seed=3))
        np.save(fake, synthetic_features(n, d, seed=4, shift=0.05))
        results = {}
        if not skip_reference:
            results["prdc compute_prdc (float32, sklearn)"] = run_child("prdc", real, fake, k, "cpu")
        results[f"imgsynth precision_recall_density_coverage ({device})"] = run_child("ours", real, fake, k, device)
    reference = next(iter(results.values())) if not skip_reference else None
    rows = [[f"PRDC n={n}×{n} d={d} k={k}", "seconds", "speed-up", "extra RSS MiB", "GPU peak MiB",
             "precision", "recall", "density", "coverage"]]
    for name, r in results.items():
        rows.append([name, f"{r['seconds']:.1f}",
                     f"{reference['seconds'] / r['seconds']:.1f}×" if reference else "",
                     f"{r['extra_rss'] / 2**20:.0f}", f"{r['gpu_peak'] / 2**20:.0f}" if r["gpu_peak"] else "",
                     *(f"{r['result'][m]:.6f}" for m in ("precision", "recall", "density", "coverage"))])
    print(table(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fd-n", type=int, default=10_000)
    parser.add_argument("--fd-d", type=int, default=2048)
    parser.add_argument("--prdc-n", type=int, default=10_000)
    parser.add_argument("--prdc-d", type=int, default=2048)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-fd", action="store_true")
    parser.add_argument("--skip-prdc", action="store_true")
    parser.add_argument("--skip-reference", action="store_true", help="Only time imgsynth (e.g. on a GPU).")
    parser.add_argument("--threads", type=int, default=None,
                        help="Limit BLAS/OpenMP threads for every implementation (default: library defaults).")
    args = parser.parse_args()
    if args.threads:
        # Set before numpy/torch start their pools; children inherit the environment.
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[variable] = str(args.threads)
    import torch

    if args.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)  # numpy/scipy pools already started in this process

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, device {args.device}\n")
    if not args.skip_fd:
        bench_frechet(args.fd_n, args.fd_d, args.device, args.skip_reference)
    if not args.skip_prdc:
        bench_prdc(args.prdc_n, args.prdc_d, args.k, args.device, args.skip_reference)


if __name__ == "__main__":
    main()
