"""Metrics in blocks (research scale): tiny blocks give the unblocked values, and those equal independent
references (scipy sqrtm FD, torch-fidelity, torchmetrics, the prdc package, numpy closed forms); a set in
one block gives today's one-shot formulas bit for bit; no whole-set copy or n × n matrix is ever made;
the bootstrap holds one replicate at a time; progress bars show."""

from __future__ import annotations

import gc
import warnings
import weakref

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist
from torch.overrides import TorchFunctionMode

from imgsynth.metrics.blocks import block_rows, row_blocks
from imgsynth.metrics.bootstrap import bootstrap_replicates
from imgsynth.metrics.distances import (
    BiasedEstimateWarning,
    cmmd,
    feature_statistics,
    frechet_distance,
    kid,
)
from imgsynth.metrics.diversity import clip_diversity, vendi_score
from imgsynth.metrics.fidelity import knn_radii, precision_recall_density_coverage


def gaussian(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0, dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, d)) * scale + shift).astype(dtype)


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's recipe: numpy statistics, scipy's general matrix square root."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


def _storages(values) -> set[int]:
    found = set()
    for value in values:
        if isinstance(value, torch.Tensor):
            found.add(value.untyped_storage().data_ptr())
        elif isinstance(value, (tuple, list)):
            found |= _storages(value)
    return found


class LargestTensors(TorchFunctionMode):
    """Records the largest new floating-point tensor any torch call returns (views of its arguments, such
    as the features themselves passed through, are not new memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest: dict[torch.dtype, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = _storages(args) | _storages((kwargs or {}).values())
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
                    and tensor.untyped_storage().data_ptr() not in given):
                self.largest[tensor.dtype] = max(self.largest.get(tensor.dtype, 0), tensor.numel())
        return out


def test_block_helpers():
    assert [(s.start, s.stop) for s in row_blocks(7, 3)] == [(0, 3), (3, 6), (6, 7)]
    assert block_rows(2048) == 4096 and block_rows(10, 3) == 3
    with pytest.raises(ValueError, match="positive integer"):
        block_rows(10, 0)


# --------------------------------------------------------------------------------------------- FD

@pytest.mark.parametrize("n_a, n_b, d", [(70, 55, 6), (9, 40, 12), (40, 9, 12)])  # covariance; cross-Gram both ways
def test_frechet_in_tiny_blocks_equals_unblocked_and_scipy(n_a, n_b, d):
    a, b = gaussian(n_a, d, 1), gaussian(n_b, d, 2, shift=0.3, scale=1.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BiasedEstimateWarning)
        unblocked = frechet_distance(a, b)
        for block in (1, 4, 7):
            assert frechet_distance(a, b, block=block) == pytest.approx(unblocked, rel=1e-12)
    assert unblocked == pytest.approx(scipy_frechet(a, b), rel=1e-7)  # sqrtm's own error is ~1e-9 here


def test_frechet_matches_torch_fidelity_on_its_statistics():
    from torch_fidelity.metric_fid import (
        fid_features_to_statistics,
        fid_statistics_to_metric,
    )

    a, b = gaussian(80, 5, 3, dtype=np.float64), gaussian(60, 5, 4, shift=0.2, dtype=np.float64)
    reference = fid_statistics_to_metric(fid_features_to_statistics(torch.tensor(a)),
                                         fid_features_to_statistics(torch.tensor(b)), verbose=False)
    assert frechet_distance(a, b, block=3) == pytest.approx(reference["frechet_inception_distance"], rel=1e-10)


def test_statistics_accumulate_in_float64_and_one_block_is_the_one_shot_formula():
    x = gaussian(50, 4, 5) * 1000 + 1e4  # a large mean: float32 sums would lose the covariance
    mu, sigma = feature_statistics(x, block=3)
    assert mu.dtype == sigma.dtype == torch.float64
    assert np.allclose(mu.numpy(), x.astype(np.float64).mean(0), rtol=1e-14, atol=0)
    assert np.allclose(sigma.numpy(), np.cov(x.astype(np.float64), rowvar=False), rtol=1e-11, atol=0)
    x64 = torch.from_numpy(x).double()
    centred = x64 - x64.mean(dim=0)
    one_mu, one_sigma = feature_statistics(x, block=50)
    assert torch.equal(one_mu, x64.mean(dim=0))  # bit for bit: small sets keep their numbers
    assert torch.equal(one_sigma, centred.mT @ centred / 49)


def test_frechet_makes_no_float64_copy_of_a_set():
    a, b = gaussian(400, 8, 6), gaussian(300, 8, 7, shift=0.1)
    with LargestTensors() as seen:
        frechet_distance(a, b, block=16)
    assert seen.largest[torch.float64] <= 16 * 8  # one block of rows (d × d = 64 is smaller still)


# --------------------------------------------------------------------------------------------- KID

@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save all extracted features")
def test_kid_converts_only_subset_rows_and_matches_torchmetrics_on_whole_set_subsets():
    from torchmetrics.image.kid import KernelInceptionDistance

    a, b = gaussian(30, 5, 8, dtype=np.float64), gaussian(30, 5, 9, shift=0.4, dtype=np.float64)
    # Subsets of all 30 rows: any permutation gives the same MMD², so torchmetrics' randperm draws do not matter.
    identity = torch.nn.Identity()
    identity.num_features = 5
    metric = KernelInceptionDistance(feature=identity, subsets=3, subset_size=30)
    metric.update(torch.tensor(b), real=True)
    metric.update(torch.tensor(a), real=False)
    assert kid(a, b, subsets=3, subset_size=30) == pytest.approx(float(metric.compute()[0]), rel=1e-10)
    big, other = gaussian(2000, 6, 10), gaussian(1500, 6, 11)
    with LargestTensors() as seen:
        value = kid(big, other, subsets=4, subset_size=20, seed=3)
    assert seen.largest[torch.float64] <= 4 * 20 * 20  # the batch's kernels; a float64 set copy would be 12,000
    assert value == kid(big.astype(np.float64), other.astype(np.float64), subsets=4, subset_size=20, seed=3)


# --------------------------------------------------------------------------------------------- PRDC

@pytest.mark.parametrize("chunk", [1, 4, 13])
def test_prdc_in_tiny_blocks_equals_the_prdc_package_and_torch_fidelity(chunk):
    from prdc import compute_prdc
    from torch_fidelity.metric_prc import prc_features_to_metric

    real, fake = gaussian(41, 6, 12, dtype=np.float64), gaussian(29, 6, 13, shift=0.3, dtype=np.float64)
    ours = precision_recall_density_coverage(real, fake, k=3, chunk=chunk)
    assert ours == precision_recall_density_coverage(real, fake, k=3, chunk=1000)
    reference = compute_prdc(real, fake, 3)
    assert ours == pytest.approx({name: float(v) for name, v in reference.items()}, rel=1e-12)
    fidelity = prc_features_to_metric(torch.tensor(fake), torch.tensor(real), prc_neighborhood=3,
                                      prc_batch_size=7, save_cpu_ram=True, verbose=False)  # '≤': no ties here
    # torch-fidelity returns float32 fractions: compare the counts of samples inside
    assert round(ours["precision"] * 29) == round(fidelity["precision"] * 29)
    assert round(ours["recall"] * 41) == round(fidelity["recall"] * 41)


def test_knn_radii_in_blocks_equal_np_partition():
    x = gaussian(37, 5, 14, dtype=np.float64)
    expected = np.partition(cdist(x, x), 3, axis=1)[:, 3]  # 3rd nearest other row: 4th smallest with itself
    for chunk in (2, 5, 37):
        assert np.allclose(knn_radii(x, 3, chunk=chunk).numpy(), expected, rtol=1e-12, atol=0)


def test_prdc_holds_no_whole_set_copy_and_no_n_by_n_block(monkeypatch):
    from imgsynth.metrics import fidelity

    monkeypatch.setattr(fidelity, "EXACT_BLOCK", 64)  # float64 gathers for near-ties: 4 MiB blocks, here 64 elements
    n, d, chunk, k = 300, 8, 32, 2
    real, fake = torch.from_numpy(gaussian(n, d, 15)), torch.from_numpy(gaussian(n, d, 16, shift=0.2))
    with LargestTensors() as seen:
        precision_recall_density_coverage(real, fake, k=k, chunk=chunk)
    # O(n) vectors (k-NN candidates: n × 2(k+1)) and chunk × chunk blocks; a copy of a set is n·(d+2) = 3000.
    assert max(seen.largest.values()) <= max(n * 2 * (k + 1), chunk * (chunk + d + 2))


# --------------------------------------------------------------------------------------------- CMMD, diversity

def test_cmmd_in_blocks_equals_the_closed_form():
    a, b = gaussian(23, 4, 17, scale=5.0, dtype=np.float64), gaussian(19, 4, 18, shift=2.0, scale=5.0, dtype=np.float64)

    def mean_kernel(x, y):
        return np.exp(-cdist(x, y, "sqeuclidean") / (2 * 10.0**2)).mean()

    expected = 1000 * (mean_kernel(a, a) + mean_kernel(b, b) - 2 * mean_kernel(a, b))
    for chunk in (3, 8, 4096):
        assert cmmd(a, b, chunk=chunk) == pytest.approx(expected, rel=1e-9)


def test_diversity_and_vendi_in_blocks_equal_numpy():
    x = gaussian(40, 6, 19, dtype=np.float64)
    units = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = units @ units.T
    pairs = 1 - (similarity.sum() - np.trace(similarity)) / (40 * 39)
    eigenvalues = np.linalg.eigvalsh(similarity / 40)
    eigenvalues = eigenvalues[eigenvalues > 1e-15]
    vendi = np.exp(-(eigenvalues * np.log(eigenvalues)).sum())
    for block in (3, 7, 100):
        assert clip_diversity(x, block=block) == pytest.approx(pairs, rel=1e-12)
        assert vendi_score(x, block=block) == pytest.approx(vendi, rel=1e-10)
    x[17] = 0
    with pytest.raises(ValueError, match=r"1 embedding rows have zero norm \(first at row 17\)"):
        clip_diversity(x, block=5)  # the row is named in the whole set, not in its block


# --------------------------------------------------------------------------------------------- bootstrap, progress

def test_bootstrap_frees_each_replicate_before_drawing_the_next():
    alive: list[weakref.ref] = []

    def statistic(candidate: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        gc.collect()
        assert all(ref() is None for ref in alive), "the previous replicate's rows are still held"
        alive.extend((weakref.ref(candidate), weakref.ref(reference)))
        return {"mean": float(candidate.mean() - reference.mean())}

    x, y = torch.from_numpy(gaussian(20, 3, 20)), torch.from_numpy(gaussian(15, 3, 21))
    assert len(bootstrap_replicates(statistic, x, y, replicates=3, seed=1)["mean"]) == 3


def test_progress_bars_show_and_change_nothing(capsys):
    real, fake = gaussian(30, 4, 22), gaussian(30, 4, 23, shift=0.2)
    values = (frechet_distance(real, fake, block=8, progress=True),
              kid(real, fake, subsets=3, subset_size=10, progress=True),
              precision_recall_density_coverage(real, fake, k=2, chunk=8, progress=True))
    shown = capsys.readouterr().err
    assert all(name in shown for name in ("fid", "kid", "prdc"))
    assert values == (frechet_distance(real, fake, block=8), kid(real, fake, subsets=3, subset_size=10),
                      precision_recall_density_coverage(real, fake, k=2, chunk=8))


def test_progress_by_default_only_on_a_terminal_after_a_delay(capsys, monkeypatch):
    from imgsynth.metrics import blocks

    real, fake = gaussian(30, 4, 24), gaussian(30, 4, 25)
    precision_recall_density_coverage(real, fake, k=2, chunk=8)
    assert "prdc" not in capsys.readouterr().err  # not a terminal: nothing
    monkeypatch.setattr(blocks, "AUTO_DELAY", 0.0)
    monkeypatch.setattr(blocks.sys.stderr, "isatty", lambda: True, raising=False)
    precision_recall_density_coverage(real, fake, k=2, chunk=8)
    assert "prdc" in capsys.readouterr().err
