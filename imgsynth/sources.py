"""Real data sources, each turned into labeled samples for an ImageSet.

A source is a function ``(location, size, mode) -> SourceData`` registered by name in ``SOURCES``;
a spec is ``name`` or ``name:location``:

- ``digits``: the embedded offline default (scikit-learn's bundled UCI handwritten digits, 1,797 8×8 images);
- ``folder:<path>``: one sub-folder per class, images of any format Pillow reads;
- ``hf:<path>``: a Hugging Face ``imagefolder`` folder (labels from its metadata) or parquet folder/file
  with image and label columns, loaded offline with ``datasets``;
- ``torchvision:<Name>:<root>``: a torchvision dataset already on disk (never downloaded).

Class order is fixed by the source (a dataset's own class list) or sorted by name, never by the file
system; the sets written from it number classes by sorted name, as every ImageSet does (the source's
own order is kept as the manifest's ``display_order``), while the train/test split follows the
source's order so that imports stay reproducible. Images are converted to ``mode`` and resized to ``size``×``size`` (bicubic; None keeps sizes).
Sources load eagerly after resizing, so bad input fails before anything is written.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from PIL import Image

from imgsynth.imageset import (ImageSet, ImageSetError, ImageSetWriter, Sample, check_label, check_labels,
                               stratified_split_indices)
from imgsynth.locking import locks_output
from imgsynth.provenance import read_card_license

DIGITS_LICENSE = {
    "name": "CC-BY-4.0",
    "source": "UCI Machine Learning Repository, Optical Recognition of Handwritten Digits "
              "(Alpaydin & Kaynak, 1998), as bundled with scikit-learn",
    "url": "https://archive.ics.uci.edu/dataset/80",
}


@dataclass
class SourceData:
    """Labeled images from a source: parallel lists, classes in a fixed (never filesystem) order."""

    name: str
    classes: list[str]
    images: list[Image.Image]
    labels: list[str]
    license: dict[str, Any] = field(default_factory=lambda: {"name": "unknown"})
    captions: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.images:
            raise ImageSetError(f"source {self.name}: no images found")
        if len(self.images) != len(self.labels):
            raise ImageSetError(f"source {self.name}: {len(self.images)} images but {len(self.labels)} labels")


def _resize(image: Image.Image, size: int | None, mode: str) -> Image.Image:
    """Convert to ``mode`` (alpha composited on white, 16-bit scaled to 8) and resize to a square."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(np.round(array * (255.0 / peak)), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.round(np.asarray(image)), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    image = image.convert(mode)
    if size and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


def load_digits_source(location: str | None = None, size: int = 16, mode: str = "L") -> SourceData:
    """The 1,797 UCI digits, 0–16 intensities scaled to 0–255 and upscaled bicubically to ``size``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = []
    for pixels in bunch.images:
        array = np.clip(np.round(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        images.append(_resize(Image.fromarray(array, mode="L"), size, mode))
    classes = [str(c) for c in range(10)]
    labels = [str(int(t)) for t in bunch.target]
    captions = [f"a handwritten digit {label}" for label in labels]
    return SourceData("digits", classes, images, labels, dict(DIGITS_LICENSE), captions)


# --------------------------------------------------------------------------------------------- folder

def _image_extensions() -> set[str]:
    return {ext.lower() for ext in Image.registered_extensions()}


def load_folder_source(location: str | None, size: int | None = 16, mode: str = "L") -> SourceData:
    """``folder:<path>``: classes are the sub-folders (sorted by name), images any format Pillow reads.

    Files inside a class folder are taken recursively in sorted order; files whose extension Pillow
    does not know are skipped, but an image file that does not decode is an error naming it. The
    license comes from a ``README.md`` card (``license:`` front matter) in the folder, if any.
    """
    root = _existing_folder(location, "folder")
    class_dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: d.name)
    if not class_dirs:
        what = "empty folder" if not any(root.iterdir()) else "no class sub-folders"
        raise ImageSetError(f"{root}: {what}; expected {root}/<class name>/<image files>")
    # Class names are the folders' own names, exactly (no Unicode normalisation): see check_label. The
    # source folder names the problem (a name with a newline would split a message holding the full path).
    check_labels([d.name for d in class_dirs], f"{root} (class folders)")
    extensions = _image_extensions()
    images, labels = [], []
    for class_dir in class_dirs:
        label = class_dir.name
        files = sorted(p for p in class_dir.rglob("*")
                       if p.is_file() and p.suffix.lower() in extensions
                       and not any(part.startswith(".") for part in p.relative_to(class_dir).parts))
        if not files:
            raise ImageSetError(f"{class_dir}: class folder holds no image files")
        for file in files:
            images.append(_resize(_open_image(file), size, mode))
            labels.append(label)
    return SourceData("folder", [d.name for d in class_dirs], images, labels,
                      _card_license(root), [f"a photo of {label}" for label in labels])


def _existing_folder(location: str | None, kind: str) -> Path:
    if not location:
        raise ImageSetError(f"source {kind}: give a location, e.g. {kind}:/path/to/data")
    root = Path(location).expanduser()
    if not root.exists():
        raise ImageSetError(f"{root}: no such folder (source {kind}:{location})")
    return root


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except Exception as exc:  # PIL raises a zoo of types for broken files
        raise ImageSetError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc


def _card_license(folder: Path) -> dict[str, Any]:
    return read_card_license(folder if folder.is_dir() else folder.parent) or {"name": "unknown"}


# --------------------------------------------------------------------------------------------- hf

IMAGE_COLUMNS = ("image", "img", "png", "jpg")
LABEL_COLUMNS = ("label", "labels", "class", "fine_label")
CAPTION_COLUMNS = ("caption", "text", "prompt")


def load_hf_source(location: str | None, size: int | None = 16, mode: str = "L") -> SourceData:
    """``hf:<path>``: an imagefolder folder with metadata, or parquet file(s), read offline with ``datasets``.

    All splits found are pooled (in sorted split order); ``import`` makes its own stratified split.
    Classes are the ClassLabel names in their order when the label column has them, else the sorted
    distinct labels. A ``caption``/``text`` column, when present, becomes the caption.
    """
    root = _existing_folder(location, "hf")
    try:
        import datasets
    except ImportError as exc:
        raise ImageSetError("source hf: needs the 'datasets' package (pip install datasets)") from exc
    if root.is_file() or any(root.rglob("*.parquet")):
        builder, kwargs = "parquet", ({"data_files": str(root)} if root.is_file() else {"data_dir": str(root)})
    else:
        builder, kwargs = "imagefolder", {"data_dir": str(root)}
    # A private cache: the arrow files are only needed while the images are read here.
    with tempfile.TemporaryDirectory(prefix="imgsynth-hf-") as cache:
        try:
            loaded = datasets.load_dataset(builder, cache_dir=cache, **kwargs)
        except Exception as exc:  # datasets raises many types for unreadable folders
            raise ImageSetError(f"{root}: datasets could not load it as {builder} ({type(exc).__name__}: {exc})") from exc
        splits = [loaded[name] for name in sorted(loaded)] if isinstance(loaded, dict) else [loaded]
        features = splits[0].features
        image_col = _pick_column(features, IMAGE_COLUMNS, lambda f: type(f).__name__ == "Image")
        label_col = _pick_column(features, LABEL_COLUMNS, lambda f: type(f).__name__ == "ClassLabel")
        if image_col is None or label_col is None:
            hint = (f"; datasets reads imagefolder labels only from metadata.jsonl: add a 'label' column "
                    f"there, or import class sub-folders as folder:{root}") if builder == "imagefolder" else ""
            raise ImageSetError(f"{root}: need an image and a label column, found {list(features)}{hint}")
        caption_col = next((c for c in CAPTION_COLUMNS if c in features), None)
        names = getattr(features[label_col], "names", None)
        images, labels, captions = [], [], []
        for split in splits:
            if type(split.features[image_col]).__name__ != "Image":
                split = split.cast_column(image_col, datasets.Image())
            for row in split:
                value = row[label_col]
                labels.append(names[value] if names else str(value))
                images.append(_resize(row[image_col], size, mode))
                captions.append(str(row[caption_col]) if caption_col and row[caption_col] else f"a photo of {labels[-1]}")
    if names:
        classes = list(names)
    else:
        distinct = set(labels)
        numeric = all(label.lstrip("-").isdigit() for label in distinct)
        classes = sorted(distinct, key=(lambda x: int(x)) if numeric else None)
    for c in classes:
        check_label(c, f"{root} label column {label_col!r}")
    return SourceData("hf", classes, images, labels, _card_license(root), captions)


def _pick_column(features: Any, names: tuple[str, ...], typed: Callable[[Any], bool]) -> str | None:
    return (next((c for c, f in features.items() if typed(f)), None)
            or next((c for c in names if c in features), None))


# --------------------------------------------------------------------------------------------- torchvision

# Where each common torchvision dataset expects its files (download=False), for the error message.
TORCHVISION_LAYOUT = {
    "CIFAR10": "ROOT/cifar-10-batches-py/ (data_batch_1 … data_batch_5, test_batch, batches.meta): "
               "unpack cifar-10-python.tar.gz into ROOT",
    "CIFAR100": "ROOT/cifar-100-python/ (train, test, meta): unpack cifar-100-python.tar.gz into ROOT",
    "MNIST": "ROOT/MNIST/raw/ (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
             "t10k-labels-idx1-ubyte, gunzipped)",
    "FashionMNIST": "ROOT/FashionMNIST/raw/ (the four *-idx?-ubyte files, gunzipped)",
    "KMNIST": "ROOT/KMNIST/raw/ (the four *-idx?-ubyte files, gunzipped)",
    "SVHN": "ROOT/train_32x32.mat and ROOT/test_32x32.mat",
    "STL10": "ROOT/stl10_binary/ (unpack stl10_binary.tar.gz into ROOT)",
}
# Licenses of the datasets whose terms are stated by their authors; others are recorded "unknown".
TORCHVISION_LICENSES = {
    "MNIST": {"name": "CC-BY-SA-3.0", "source": "http://yann.lecun.com/exdb/mnist/"},
    "FashionMNIST": {"name": "MIT", "source": "https://github.com/zalandoresearch/fashion-mnist"},
    "KMNIST": {"name": "CC-BY-SA-4.0", "source": "https://github.com/rois-codh/kmnist"},
    "SVHN": {"name": "non-commercial", "source": "http://ufldl.stanford.edu/housenumbers/ (non-commercial use only)"},
}


def load_torchvision_source(location: str | None, size: int | None = 16, mode: str = "L") -> SourceData:
    """``torchvision:<Name>:<root>``: a torchvision dataset already on disk, all official splits pooled.

    Never downloads: missing files raise an error saying which files to put where. Classes are the
    dataset's own ``classes`` list (its label order), else the sorted distinct targets.
    """
    name, _, root = (location or "").partition(":")
    if not name or not root:
        raise ImageSetError("source torchvision: use torchvision:<Name>:<root>, e.g. torchvision:CIFAR10:/data/cifar")
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, name, None)
    if not (inspect.isclass(dataset_class) and issubclass(dataset_class, torchvision.datasets.VisionDataset)):
        raise ImageSetError(f"source torchvision: {name!r} is not a torchvision dataset (e.g. CIFAR10, CIFAR100, "
                            "MNIST, FashionMNIST, SVHN)")
    parameters = inspect.signature(dataset_class).parameters
    if "train" in parameters:
        parts: list[dict[str, Any]] = [{"train": True}, {"train": False}]
    elif "split" in parameters:
        parts = [{"split": "train"}, {"split": "test"}]
    else:
        parts = [{}]
    datasets = []
    for part in parts:
        try:
            datasets.append(dataset_class(root, download=False, **part))
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            layout = TORCHVISION_LAYOUT.get(name, f"the files torchvision.datasets.{name}(root=ROOT, "
                                                  "download=False) expects (see its documentation)")
            raise ImageSetError(f"torchvision {name}: no usable data under {Path(root).absolute()} ({exc}). "
                                f"imgsynth never downloads; put {layout.replace('ROOT', str(root))}") from exc
    images, targets = [], []
    for dataset in datasets:
        for i in range(len(dataset)):
            image, target = dataset[i]
            images.append(_resize(image, size, mode))
            targets.append(int(target))
    known = list(getattr(datasets[0], "classes", None) or [])
    classes = [str(c) for c in known] if known else [str(t) for t in sorted(set(targets))]
    labels = [classes[t] if known else str(t) for t in targets]
    for c in classes:
        check_label(c, f"torchvision {name} class")
    license = dict(TORCHVISION_LICENSES.get(name, {"name": "unknown"}))
    return SourceData(f"torchvision-{name}", classes, images, labels, license,
                      [f"a photo of {label}" for label in labels])


GAUSSIAN_DEFAULTS = {"classes": 2, "per_class": 500, "mean": 128.0, "sigma": 20.0, "spacing": 40.0, "seed": 0}


def gaussian_parameters(location: str | None) -> dict[str, float]:
    """The parameters of a ``gaussian:key=value,…`` spec, with defaults (see :func:`load_gaussian_source`)."""
    values: dict[str, float] = dict(GAUSSIAN_DEFAULTS)
    for part in filter(None, (location or "").split(",")):
        key, sep, raw = part.partition("=")
        if not sep or key.strip() not in GAUSSIAN_DEFAULTS:
            raise ImageSetError(f"source gaussian:{location}: {part!r} is not key=value with a key in "
                                f"{sorted(GAUSSIAN_DEFAULTS)}")
        try:
            values[key.strip()] = float(raw)
        except ValueError:
            raise ImageSetError(f"source gaussian:{location}: {key.strip()} = {raw!r} is not a number") from None
    if values["classes"] < 1 or values["per_class"] < 2 or values["sigma"] <= 0:
        raise ImageSetError(f"source gaussian:{location}: needs classes ≥ 1, per_class ≥ 2 and sigma > 0")
    return values


def load_gaussian_source(location: str | None = None, size: int | None = 4, mode: str = "L") -> SourceData:
    """A synthetic set with a known distribution, for checking the loop against theory.

    Class c's images have independent pixels ~ N(mean + (c − (classes − 1)/2) · spacing, sigma²), rounded
    to uint8; the parameters (``gaussian:classes=2,per_class=500,mean=128,sigma=20,spacing=40,seed=0``
    are the defaults) are part of the spec, so the set records them. With the defaults a pixel leaves
    [0, 255] with probability < 1e-6 and rounding adds 1/12 to a variance of 400 (0.02 %).
    """
    if mode != "L":
        raise ImageSetError(f"source gaussian: grayscale only (mode L), got mode {mode!r}")
    p = gaussian_parameters(location)
    side = int(size or 4)
    rng = np.random.default_rng(int(p["seed"]))
    classes = [f"g{c}" for c in range(int(p["classes"]))]
    images, labels = [], []
    for c, name in enumerate(classes):
        centre = p["mean"] + (c - (len(classes) - 1) / 2) * p["spacing"]
        pixels = rng.normal(centre, p["sigma"], (int(p["per_class"]), side, side))
        images.extend(Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8)) for x in pixels)
        labels.extend([name] * int(p["per_class"]))
    record = {"name": "CC0-1.0", "source": "synthetic: imgsynth gaussian source", "parameters": p}
    return SourceData(f"gaussian-{'-'.join(f'{k}{v:g}' for k, v in p.items())}", classes, images, labels, record)


# --------------------------------------------------------------------------------------------- import

SOURCES: dict[str, Callable[..., SourceData]] = {
    "digits": load_digits_source,
    "gaussian": load_gaussian_source,
    "folder": load_folder_source,
    "hf": load_hf_source,
    "torchvision": load_torchvision_source,
}


def load_source(spec: str, size: int | None = 16, mode: str = "L") -> SourceData:
    """Load a source by spec: a registered name (``digits``) or ``name:location``."""
    name, _, location = spec.partition(":")
    if name not in SOURCES:
        raise ImageSetError(f"unknown source {spec!r}; known: {sorted(SOURCES)}")
    return SOURCES[name](location or None, size=size, mode=mode)


def _samples(data: SourceData, indices: list[int]) -> Iterator[Sample]:
    for i in indices:
        caption = data.captions[i] if data.captions else f"a photo of {data.labels[i]}"
        yield Sample(data.images[i], data.labels[i], caption, None, f"{data.name}-{i:07d}")


def source_license(found: dict[str, Any], declared: str | None) -> dict[str, Any]:
    """The license a source records: what the data declares, else the ``--license`` option, else unknown."""
    if found.get("name", "unknown") != "unknown":
        record = dict(found)
        if declared and declared.strip().lower() != str(found["name"]).lower():
            record["user_declared"] = declared
        return record
    if declared:
        return {"name": declared, "from": "--license"}
    return {"name": "unknown"}


# The square sizes an import makes: below 4 px no generator or classifier here works; above, memory grows fast.
MIN_SIZE, MAX_SIZE = 4, 4096


@locks_output("out")
def import_source(spec: str, out: str | os.PathLike, *, size: int | None = 16, mode: str = "L",
                  test_fraction: float = 0.2, seed: int = 0, license: str | None = None,
                  annotations: Mapping[str, Any] | None = None) -> tuple[ImageSet, ImageSet]:
    """Import a source into ``out/train`` and ``out/test`` ImageSets with a stratified, seeded split;
    ``annotations``: further manifest fields of both (what was found in the source, e.g. synthetic markers)."""
    if size is not None and not (isinstance(size, int) and MIN_SIZE <= size <= MAX_SIZE):
        raise ValueError(f"size = {size!r}: images are imported as squares of {MIN_SIZE} to {MAX_SIZE} px "
                         "(library callers pass size=None to keep each image's own size)")
    data = load_source(spec, size=size, mode=mode)
    class_index = {c: i for i, c in enumerate(data.classes)}
    train_idx, test_idx = stratified_split_indices([class_index[l] for l in data.labels], test_fraction, seed)
    record = source_license(data.license, license)
    name, _, location = spec.partition(":")
    source_entry = {"id": f"source:{data.name}", "path": spec, "kind": "source", "license": record}
    if location and name in ("folder", "hf"):
        source_entry["location"] = str(Path(location).expanduser().absolute())
    out = Path(out)
    result = []
    for part, indices in (("train", train_idx), ("test", test_idx)):
        config = {"source": spec, "size": size, "mode": mode, "test_fraction": test_fraction,
                  "seed": seed, "part": part}
        writer = ImageSetWriter(out / part, data.classes, kind="real", config=config, license=record,
                                parents=[source_entry], annotations=annotations)
        writer.write_all(_samples(data, indices))
        result.append(writer.finalize())
    return result[0], result[1]
