"""Issue 22, item 3: `imgsynth stats` writes reference statistics (mu, sigma, optionally features, a JSON header)
that numpy reads without pickle and pytorch-fid reads as its own; `imgsynth metrics` reads them back and
refuses statistics another extractor or resize convention made, naming both."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
from cli_checks import nothing_written, refused
from PIL import Image

from imgsynth.imageset import ImageSet, ImageSetWriter, Sample
from imgsynth.metrics.statistics_files import (
    FORMAT,
    StatisticsFileError,
    check_extractor,
    read_statistics,
    resize_convention,
    statistics_header,
    weights_sha256,
    write_statistics,
)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> ImageSet:
    """30 random 8 × 8 grey images in two classes."""
    rng = np.random.default_rng(1)
    writer = ImageSetWriter(tmp_path_factory.mktemp("stats") / "set", ["a", "b"], kind="real")
    writer.write_all(Sample(Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L"), "ab"[i % 2],
                            "", None, f"img-{i}") for i in range(30))
    return writer.finalize()


def _pixels(image_set: ImageSet) -> np.ndarray:
    return np.stack([np.asarray(image_set.load_image(i), dtype=np.float32).reshape(-1) / np.float32(255)
                     for i in range(len(image_set))])


def test_stats_writes_mu_sigma_features_and_a_header_numpy_reads_without_pickle(tiny_set, tmp_path, run_cli):
    out = tmp_path / "ref.npz"
    code, printed, err = run_cli("stats", tiny_set.root, out, "--features", "pixels", "--with-features", "--device",
                                 "cpu", "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    assert printed.splitlines()[-1] == f"wrote {out}"
    features = _pixels(tiny_set)
    with np.load(out, allow_pickle=False) as loaded:
        assert sorted(loaded.files) == ["features", "header", "mu", "sigma"]
        assert loaded["mu"].dtype == np.float64 and loaded["sigma"].dtype == np.float64
        np.testing.assert_allclose(loaded["mu"], features.astype(np.float64).mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(loaded["sigma"], np.cov(features.astype(np.float64), rowvar=False), rtol=1e-9,
                                   atol=1e-15)
        np.testing.assert_array_equal(loaded["features"], features)
        header = json.loads(loaded["header"].tobytes().decode("utf-8"))
    assert header == {"format": FORMAT, "version": 1, "extractor": "pixels", "extractor_id": "pixels:v1",
                      "weights_sha256": None, "resize_convention": "clean",
                      "preprocessing": "as-stored|uint8/255|flatten", "image_size": [8, 8], "image_mode": "L",
                      "n": 30, "dims": 64, "source": tiny_set.id}
    # pytorch-fid's own reader takes mu and sigma out of it.
    from pytorch_fid.fid_score import compute_statistics_of_path

    mu, sigma = compute_statistics_of_path(str(out), None, 50, 2048, "cpu")
    assert mu.shape == (64,) and sigma.shape == (64, 64)
    read = read_statistics(out)
    assert read.n == 30 and read.header == header and read.features.dtype == np.float32


def test_a_file_of_another_extractor_is_refused_naming_both_and_a_foreign_one_is_noted(tiny_set, tmp_path, run_cli):
    features = _pixels(tiny_set).astype(np.float64)
    mu, sigma = features.mean(axis=0), np.cov(features, rowvar=False)
    other = tmp_path / "other.npz"
    extractor = SimpleNamespace(name="inception", id="inception-v3-fid:0123456789abcdef", preprocessing="x")
    header = statistics_header(extractor, n=30, dims=64, source="set", image_size=(8, 8), image_mode="L")
    write_statistics(other, mu, sigma, header)
    out = tmp_path / "m.csv"
    refused(run_cli("metrics", other, tiny_set.root, "--features", "pixels", "--device", "cpu", "--out", out,
                    "--cache-dir", tmp_path / "cache"),
            str(other), "'inception'", "inception-v3-fid:0123456789abcdef", "'pixels'", "pixels:v1")
    assert nothing_written(out)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, mu=mu, sigma=sigma)
    code, printed, err = run_cli("metrics", foreign, tiny_set.root, "--features", "pixels", "--device", "cpu",
                                 "--cache-dir", tmp_path / "cache", "--metrics", "fid")
    assert code == 0, err
    assert f"note: {foreign}: a statistics file without imgsynth's header" in err and "on your word" in err
    assert "fid" in printed
    wider = tmp_path / "wider.npz"
    np.savez(wider, mu=np.zeros(2048), sigma=np.eye(2048))
    refused(run_cli("metrics", wider, tiny_set.root, "--features", "pixels", "--device", "cpu", "--cache-dir",
                    tmp_path / "cache"), f"{wider}: 2048-dimensional statistics", "64-dimensional 'pixels'")


def test_a_file_of_another_resize_convention_is_refused_naming_both(tmp_path):
    asked = SimpleNamespace(name="inception", id="inception-v3-fid:0123", preprocessing="x", resize_mode="pytorch-fid")
    assert resize_convention(asked) == "pytorch-fid"
    assert resize_convention(SimpleNamespace()) == "clean"  # today's extractors: clean-fid's convention
    made = SimpleNamespace(name="inception", id="inception-v3-fid:0123", preprocessing="x")
    path = write_statistics(tmp_path / "s.npz", np.zeros(2), np.eye(2),
                            statistics_header(made, n=5, dims=2, source="s", image_size=None, image_mode=None))
    with pytest.raises(StatisticsFileError, match="resize convention 'clean'.*uses 'pytorch-fid'"):
        check_extractor(read_statistics(path), asked)
    assert check_extractor(read_statistics(path), made) is None


def test_weights_sha256_is_the_full_digest_of_the_inception_weights_file(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    assert weights_sha256(SimpleNamespace(name=f"inception:{weights}")) == hashlib.sha256(b"weights").hexdigest()
    assert weights_sha256(SimpleNamespace(name="x", weights_sha256="ab" * 32)) == "ab" * 32
    assert weights_sha256(SimpleNamespace(name="pixels")) is None


def test_stats_refuses_a_statistics_file_as_source_and_another_suffix(tiny_set, tmp_path, run_cli):
    refused(run_cli("stats", tiny_set.root, tmp_path / "s.txt", "--features", "pixels"), "s.txt", "*.npz")
    source = write_statistics(tmp_path / "s.npz", np.zeros(2), np.eye(2), statistics_header(
        SimpleNamespace(name="pixels", id="pixels:v1", preprocessing="x"), n=5, dims=2, source="s",
        image_size=None, image_mode=None))
    out = tmp_path / "t.npz"
    refused(run_cli("stats", source, out, "--features", "pixels"), str(source), "already a statistics file")
    assert nothing_written(out)


def test_compressed_and_float32_files_are_read_and_other_members_are_never_loaded(tmp_path):
    marker = tmp_path / "code-ran"

    class Planted:
        def __reduce__(self):  # pickle's protocol: unpickling would create the marker
            return (open, (str(marker), "w"))

    sigma = np.asfortranarray(np.array([[2.0, 0.5], [0.5, 1.0]], dtype=np.float32))
    np.savez_compressed(tmp_path / "c.npz", mu=np.array([1.0, 2.0], np.float32), sigma=sigma,
                        other=np.array([Planted()], dtype=object))
    read = read_statistics(tmp_path / "c.npz")
    assert read.mu.dtype == np.float64 and read.header is None and read.features is None
    np.testing.assert_array_equal(read.sigma, sigma.astype(np.float64))
    assert not marker.exists()


def test_a_rerun_of_stats_replaces_its_own_file_and_no_other(tiny_set, tmp_path, run_cli):
    """`imgsynth stats` again to the same name replaces the file it wrote (an npz has no first line to check, so
    its header says whose it is); a pytorch-fid file, a zip without imgsynth's header or any other file there is
    the user's, and is refused untouched."""
    import zipfile

    out = tmp_path / "ref.npz"
    code, _, err = run_cli("stats", tiny_set.root, out, "--features", "pixels", "--device", "cpu")
    assert code == 0, err
    first = read_statistics(out)
    assert first.features is None
    code, _, err = run_cli("stats", tiny_set.root, out, "--features", "pixels", "--with-features", "--device", "cpu")
    assert code == 0, err
    second = read_statistics(out)
    assert second.features is not None and second.features.shape == (len(tiny_set), 64)
    np.testing.assert_array_equal(second.mu, first.mu)

    def pytorch_fid(path):
        np.savez(path, mu=np.zeros(64), sigma=np.eye(64))

    def other_zip(path):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("header.npy", b"not an array")

    for name, make in (("pytorch-fid.npz", pytorch_fid), ("other.npz", other_zip),
                       ("notes.npz", lambda path: path.write_text("my notes\n"))):
        path = tmp_path / name
        make(path)
        before = path.read_bytes()
        refused(run_cli("stats", tiny_set.root, path, "--features", "pixels", "--device", "cpu"),
                name, "not written by this command")
        assert path.read_bytes() == before
