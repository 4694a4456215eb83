"""Research-scale metrics: a cost curve (time, peak memory) per metric and set size, side by side with the
reference packages, and the Fréchet distance against its BLAS limit, all in one run.

For every size n (``--sizes``, default 5000 10000 20000 50000) and metric (FID from features, KID,
precision/recall/density/coverage), each implementation runs in a fresh subprocess that builds seeded
Gaussian features (n × d float32 per set: real ~ N(0, 1), fake ~ N(0.05, 1.05²), the same arrays in
every subprocess), then times the metric alone. "peak RSS" is the subprocess's ``ru_maxrss`` at the end:
everything it ever held (interpreter, torch, both feature sets, the metric's working memory); "features"
is the resident size after the features were made, before the metric ran.

Implementations: imgsynth (the blocked path, the library default), and where they fit in memory:

* FID: torch-fidelity (``fid_features_to_statistics`` + ``fid_statistics_to_metric``) and torchmetrics
  (``FrechetInceptionDistance`` with an identity feature module, fed 1000-row batches).
* KID: torch-fidelity (``kid_features_to_metric``, the same seeded subsets as imgsynth) and torchmetrics
  (``KernelInceptionDistance``; its subsets come from ``torch.randperm``, so its value differs by sampling).
* PRDC: the ``prdc`` package (``compute_prdc``) and torch-fidelity (``prc_features_to_metric``, precision
  and recall only, ``save_cpu_ram=True`` i.e. row batches of its default 10,000, neighbourhood k).

A reference whose memory formula (printed in the table) exceeds ``--memory-budget`` (default: 80 % of
MemAvailable) is not run, and the table says so. For n ≤ ``--unblocked-max`` imgsynth also runs with one
block (``block=n`` / ``chunk=n``: the unblocked formulas) and the table gives the largest relative
difference from the blocked values. ``fd BLAS limit`` times just the dense algebra FD needs, on ready
centred float64 copies: two XᵀX (torch GEMMs), a Cholesky, two d × d GEMMs and an eigvalsh; the ratio
row divides imgsynth's FID time by it.

    python benchmarks/bench_scale.py --sizes 2000                 # a quick check
    python benchmarks/bench_scale.py                              # the curve (50k: many minutes)
    python benchmarks/bench_scale.py --sizes 50000 --references none --metrics prdc
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

METRICS = ("fid", "kid", "prdc")
REFERENCES = {"fid": ("torch-fidelity", "torchmetrics"), "kid": ("torch-fidelity", "torchmetrics"),
              "prdc": ("prdc", "torch-fidelity")}
GIB = 2**30


# --------------------------------------------------------------------------------------------- child side

def _features(n: int, d: int, seed: int):
    import numpy as np

    real = np.random.default_rng([seed, 0]).standard_normal((n, d), dtype=np.float32)
    fake = np.random.default_rng([seed, 1]).standard_normal((n, d), dtype=np.float32)
    fake *= 1.05
    fake += 0.05
    return real, fake


def _rss() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class _Identity:
    """A feature 'network' for torchmetrics that returns its input (built lazily: torch is imported late)."""

    @staticmethod
    def make(d: int):
        import torch

        class Identity(torch.nn.Module):
            num_features = d

            def forward(self, x):
                return x

        return Identity()


def _prepare(job: dict, real_np, fake_np, real, fake):
    """The measured call for one (metric, implementation), with its imports done (they are not timed)."""
    import torch

    metric, impl, n, d, k, seed = job["metric"], job["impl"], job["n"], job["d"], job["k"], job["seed"]
    subsets, subset_size = job["kid_subsets"], job["kid_subset_size"]
    one_block = impl == "imgsynth (one block)"
    if metric == "fid" and impl.startswith("imgsynth"):
        from imgsynth.metrics.distances import frechet_distance

        return lambda: {"fid": frechet_distance(fake, real, block=n if one_block else None)}
    if metric == "fid" and impl == "torch-fidelity":
        from torch_fidelity.metric_fid import (
            fid_features_to_statistics,
            fid_statistics_to_metric,
        )

        def torch_fidelity_fid() -> dict:
            stats = fid_features_to_statistics(fake), fid_features_to_statistics(real)
            return {"fid": fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]}

        return torch_fidelity_fid
    if metric == "fid" and impl == "torchmetrics":
        from torchmetrics.image.fid import FrechetInceptionDistance

        def torchmetrics_fid() -> dict:
            fid = FrechetInceptionDistance(feature=_Identity.make(d))
            for rows in range(0, n, 1000):
                fid.update(real[rows:rows + 1000], real=True)
                fid.update(fake[rows:rows + 1000], real=False)
            return {"fid": fid.compute()}

        return torchmetrics_fid
    if metric == "kid" and impl.startswith("imgsynth"):
        from imgsynth.metrics.distances import kid

        return lambda: {"kid": kid(fake, real, subsets, subset_size, seed)}
    if metric == "kid" and impl == "torch-fidelity":
        from torch_fidelity.metric_kid import kid_features_to_metric

        return lambda: {"kid": kid_features_to_metric(
            fake, real, kid_subsets=subsets, kid_subset_size=subset_size, rng_seed=seed, verbose=False,
            kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
            kid_kernel_poly_coef0=1)["kernel_inception_distance_mean"]}
    if metric == "kid" and impl == "torchmetrics":
        from torchmetrics.image.kid import KernelInceptionDistance

        def torchmetrics_kid() -> dict:
            torch.manual_seed(seed)
            kid_metric = KernelInceptionDistance(feature=_Identity.make(d), subsets=subsets, subset_size=subset_size)
            kid_metric.update(real, real=True)
            kid_metric.update(fake, real=False)
            return {"kid": kid_metric.compute()[0]}

        return torchmetrics_kid
    if metric == "prdc" and impl.startswith("imgsynth"):
        from imgsynth.metrics.fidelity import precision_recall_density_coverage

        return lambda: precision_recall_density_coverage(real, fake, k, **({"chunk": n} if one_block else {}))
    if metric == "prdc" and impl == "prdc":
        import contextlib
        import io

        from prdc import compute_prdc

        def prdc_package() -> dict:
            with contextlib.redirect_stdout(io.StringIO()):
                return compute_prdc(real_np, fake_np, k)

        return prdc_package
    if metric == "prdc" and impl == "torch-fidelity":
        from torch_fidelity.metric_prc import prc_features_to_metric

        def torch_fidelity_prc() -> dict:
            out = prc_features_to_metric(fake, real, prc_neighborhood=k, prc_batch_size=10000, save_cpu_ram=True,
                                         verbose=False)
            return {"precision": out["precision"], "recall": out["recall"]}

        return torch_fidelity_prc
    if metric == "fid" and impl == "fd BLAS limit":
        return None
    raise ValueError(f"no implementation {impl!r} of {metric!r}")


def _run(job: dict) -> dict:
    """One (metric, implementation, n) measurement: seconds, values, resident size with the features."""
    import numpy as np
    import torch

    real_np, fake_np = _features(job["n"], job["d"], job["seed"])
    real, fake = torch.from_numpy(real_np), torch.from_numpy(fake_np)
    call = _prepare(job, real_np, fake_np, real, fake)
    # Start the BLAS/LAPACK thread pools untimed, in every subprocess alike.
    small = torch.eye(64, dtype=torch.float64)
    torch.linalg.eigvalsh(torch.linalg.cholesky(small) @ small)
    np.linalg.eigvalsh(small.numpy() @ small.numpy())
    features_rss, load = _rss(), os.getloadavg()[0]
    if call is None:
        values, seconds = _blas_limit(fake, real)
    else:
        start = time.perf_counter()
        values = call()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "values": {name: float(v) for name, v in values.items()},
            "features_rss": features_rss, "load": load}


def _blas_limit(a, b) -> tuple[dict, float]:
    """The dense algebra of FD from features, each step one BLAS/LAPACK call on ready float64 operands."""
    import torch

    seconds = 0.0
    sigmas = []
    for x in (a, b):
        centred = x.to(torch.float64)
        centred -= centred.mean(dim=0)  # operands prepared untimed
        start = time.perf_counter()
        gram = centred.mT @ centred
        seconds += time.perf_counter() - start
        sigmas.append(gram / (x.shape[0] - 1))
        del centred
    start = time.perf_counter()
    factor = torch.linalg.cholesky(sigmas[0])
    m = factor.mT @ sigmas[1] @ factor
    eigenvalues = torch.linalg.eigvalsh(m)
    seconds += time.perf_counter() - start
    return {"trace_sqrt": float(eigenvalues.clamp_min(0).sqrt().sum())}, seconds


def child_main(spec: str) -> None:
    job = json.loads(spec)
    if job.get("threads"):
        import torch

        torch.set_num_threads(job["threads"])
    result = _run(job)
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------- parent side

def memory_formula(metric: str, impl: str, n: int, d: int) -> tuple[int, str]:
    """Estimated peak bytes of a reference beyond the interpreter, and the formula, to decide whether it runs."""
    features = 2 * n * d * 4
    if impl == "prdc":
        return features + 14 * n * n, "features + ~14·n² B (n² float32 distances, int64 argpartition)"
    if metric == "prdc" and impl == "torch-fidelity":
        batch = min(n, 10000)
        return features + 8 * batch * n, "features + ~8·batch·n B (float32 cdist rows, batch 10000)"
    if metric == "fid" and impl == "torch-fidelity":
        return features + 8 * n * d, "features + 8·n·d B (np.cov's float64 copy)"
    if metric == "kid" and impl == "torchmetrics":
        return 2 * features, "2 × features (its state is concatenated)"
    if impl == "fd BLAS limit":
        return features + 8 * n * d, "features + 8·n·d B (one centred float64 copy)"
    return features, "features"


def available_memory() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def run_child(job: dict, timeout: float | None) -> dict:
    env = dict(os.environ)
    if job.get("threads"):
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[variable] = str(job["threads"])
    try:
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True,
                             check=False, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["killed"])[-1]
        return {"error": f"exit {out.returncode}: {tail[:120]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _values(values: dict) -> str:
    return ", ".join(f"{name} {value:.6g}" for name, value in values.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000, 50000],
                        help="Rows per set (real and fake each).")
    parser.add_argument("--d", type=int, default=2048, help="Feature dimensions.")
    parser.add_argument("--k", type=int, default=5, help="Neighbours for PRDC.")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    parser.add_argument("--references", nargs="+", default=["all"],
                        help="Reference packages to run: all, none, or names (prdc torch-fidelity torchmetrics).")
    parser.add_argument("--unblocked-max", type=int, default=10000,
                        help="Also run imgsynth with one block at sizes up to this (default 10000).")
    parser.add_argument("--memory-budget", type=float, default=None,
                        help="GiB a reference may take (default: 80%% of MemAvailable at start).")
    parser.add_argument("--threads", type=int, default=None, help="BLAS/OpenMP threads in every subprocess.")
    parser.add_argument("--timeout", type=float, default=None, help="Seconds before a subprocess is abandoned.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return

    budget = int(args.memory_budget * GIB) if args.memory_budget else int(0.8 * available_memory())
    wanted = {"all": {"prdc", "torch-fidelity", "torchmetrics"}, "none": set()}
    references = set().union(*(wanted.get(r, {r}) for r in args.references))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start, d = {args.d}, k = {args.k}, "
          f"KID {args.kid_subsets} subsets of {args.kid_subset_size}, threads {args.threads or 'library default'}, "
          f"reference memory budget {budget / GIB:.1f} GiB\n", flush=True)
    rows = ["| metric | n | implementation | seconds | peak RSS MiB | features RSS MiB | load | values | note |",
            "|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for n in args.sizes:
        for metric in args.metrics:
            impls = ["imgsynth"] + (["imgsynth (one block)"] if n <= args.unblocked_max else [])
            impls += ["fd BLAS limit"] if metric == "fid" else []
            impls += [r for r in REFERENCES[metric] if r in references]
            results: dict[str, dict] = {}
            for impl in impls:
                note = ""
                if not impl.startswith("imgsynth"):
                    need, formula = memory_formula(metric, impl, n, args.d)
                    note = f"{formula} ≈ {need / GIB:.1f} GiB"
                    if need > budget:
                        rows.append(f"| {metric} | {n} | {impl} | not run | | | | | {note} > budget "
                                    f"{budget / GIB:.1f} GiB |")
                        print(rows[-1], flush=True)
                        continue
                job = {"metric": metric, "impl": impl, "n": n, "d": args.d, "k": args.k, "seed": args.seed,
                       "kid_subsets": args.kid_subsets, "kid_subset_size": args.kid_subset_size,
                       "threads": args.threads}
                r = run_child(job, args.timeout)
                results[impl] = r
                if "error" in r:
                    rows.append(f"| {metric} | {n} | {impl} | failed | | | | | {r['error']} |")
                else:
                    if impl == "imgsynth (one block)" and "error" not in results.get("imgsynth", {"error": 1}):
                        blocked = results["imgsynth"]["values"]
                        worst = max(abs(v - blocked[name]) / max(abs(blocked[name]), 1e-300)
                                    for name, v in r["values"].items())
                        note = f"max rel. difference from blocked {worst:.1e}"
                    shown = "" if impl == "fd BLAS limit" else _values(r["values"])
                    rows.append(f"| {metric} | {n} | {impl} | {r['seconds']:.2f} | {r['peak_rss'] / 2**20:.0f} | "
                                f"{r['features_rss'] / 2**20:.0f} | {r['load']:.2f} | {shown} | {note} |")
                print(rows[-1], flush=True)
            ours, limit = results.get("imgsynth", {}), results.get("fd BLAS limit", {})
            if metric == "fid" and "seconds" in ours and "seconds" in limit:
                ratios.append(f"| {n} | {ours['seconds']:.2f} | {limit['seconds']:.2f} | "
                              f"{ours['seconds'] / limit['seconds']:.2f}× |")
    print("\n" + "\n".join(rows))
    if ratios:
        print("\n| n | imgsynth FID s | BLAS limit s | ratio |\n|---|---|---|---|\n" + "\n".join(ratios))
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
