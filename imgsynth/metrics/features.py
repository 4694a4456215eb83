"""Feature extractors by name, and an on-disk feature cache.

Names (the registry maps the part before the first ``:`` to a constructor, as timm/open_clip do):

* ``inception`` or ``inception:<weights.pth>`` — the FID Inception-v3 (torch-fidelity's
  ``FeatureExtractorInceptionV3``, the TensorFlow FID weights that torchmetrics also uses), 2048-d pool
  features. Without a path the weights are looked for where torch-fidelity/torchmetrics cache them.
* ``clip:<model>:<pretrained tag or checkpoint file>`` or ``clip:<folder>`` — open_clip; a folder holds
  ``open_clip_config.json`` and the weights (open_clip's ``local-dir:`` layout). Unit-norm image
  embeddings; ``encode_text`` gives unit-norm text embeddings.
* ``dinov2:<folder or hub name>`` — transformers ``AutoModel`` (a ``save_pretrained`` folder, or a hub
  name already in the local Hugging Face cache); the CLS token after the final layer norm.
* ``domain:<checkpoint>`` — an imgsynth classifier checkpoint, penultimate layer (``imgsynth.classifier``).

Nothing is ever downloaded: weights come from a local path or the user's cache, and a missing file is
a ``FileNotFoundError`` naming exactly what to fetch and where to put it. Nothing is ever unpickled with
code-running pickle either (``imgsynth.safe_loading``): Inception weights are read by imgsynth itself with
``torch.load(weights_only=True)`` after their sha256 is checked against the one a hub-style file name
claims, and a refused file is an ``UnsafeFileError`` naming it.

Resize convention (clean-fid, Parmar et al. 2022, showed the choice moves FID a lot): images are
converted to RGB and resized on the uint8 PIL image with PIL's bicubic filter, which is properly
antialiased, never with an unfiltered tensor ``interpolate``. Inception gets the 299 × 299 PIL-bicubic
image as uint8 (torch-fidelity's own TF-style bilinear resize is then the identity, so the network sees
exactly those pixels; clean-fid resizes in float instead, which differs by the final rounding to uint8,
at most half a grey level). CLIP resizes the shorter side to the model's size and centre-crops, as
open_clip's own eval transform does with PIL input; DINOv2 gets a 224 × 224 resize of the whole image
(no crop, so the border is evaluated too). ``FeatureExtractor.preprocessing`` describes this and is part
of the cache key.

Cache: ``cached_features(image_set, extractor)`` stores features as safetensors files in
``$IMGSYNTH_CACHE/features`` (default ``~/.cache/imgsynth/features``), keyed by the set's id and row
order, the extractor id (which includes a hash of the weights) and its preprocessing; writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from imgsynth.imageset import ImageSet
from imgsynth.safe_loading import check_claimed_digest, first_line, load_torch_file, pickle_files, refusing_pickles

RESAMPLE = Image.Resampling.BICUBIC
CACHE_FORMAT = 1


# --------------------------------------------------------------------------------------------- resizing

def clean_resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """RGB, then PIL bicubic resize of the uint8 image to ``size`` = (width, height)."""
    image = image.convert("RGB")
    if image.size == tuple(size):
        return image
    return image.resize(tuple(size), resample=RESAMPLE)


def resize_shorter_and_crop(image: Image.Image, size: int) -> Image.Image:
    """RGB, shorter side to ``size`` with PIL bicubic, centre crop to size × size (open_clip's eval rule)."""
    image = image.convert("RGB")
    width, height = image.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    if new != image.size:
        image = image.resize(new, resample=RESAMPLE)
    left = int(round((new[0] - size) / 2.0))
    top = int(round((new[1] - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 tensor of an RGB PIL image."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())


def to_normalized_tensor(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(3, H, W) float tensor: pixels / 255, then (x − mean) / std per channel."""
    x = to_uint8_tensor(image).float().div_(255.0)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


# --------------------------------------------------------------------------------------------- hashing

_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a big checkpoint is read once per process."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def folder_digest(folder: str | os.PathLike, patterns: Iterable[str]) -> str:
    """sha256 over the names and digests of the files in ``folder`` matching ``patterns``."""
    folder = Path(folder)
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\t{file_digest(path)}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- base

def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _Preprocessed(torch.utils.data.Dataset):
    """Images (an ImageSet, read lazily, or PIL images) through a preprocessing function."""

    def __init__(self, images: ImageSet | Sequence[Image.Image], preprocess: Callable[[Image.Image], torch.Tensor]):
        self.images, self.preprocess = images, preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images.load_image(index) if isinstance(self.images, ImageSet) else self.images[index]
        return self.preprocess(image)


class FeatureExtractor:
    """An image → feature-vector model with a fixed, described preprocessing.

    Subclasses set ``name`` (the spec it was built from), ``id`` (name plus a weights hash: equal ids
    give equal features), ``preprocessing`` (a description of what ``preprocess`` does), and implement
    ``preprocess(PIL image) -> tensor`` and ``forward(batch) -> (B, D) tensor``.
    """

    name: str
    id: str
    preprocessing: str
    device: torch.device

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def extract(self, images: ImageSet | Sequence[Image.Image], batch_size: int = 64,
                num_workers: int = 0) -> torch.Tensor:
        """Features of every image, in order, as a float32 CPU tensor (N, D)."""
        if len(images) == 0:
            raise ValueError(f"{self.name}: no images to extract features from")
        loader = torch.utils.data.DataLoader(_Preprocessed(images, self.preprocess), batch_size=batch_size,
                                             shuffle=False, num_workers=num_workers,
                                             pin_memory=self.device.type == "cuda")
        parts = [self.forward(batch.to(self.device, non_blocking=True)).float().cpu() for batch in loader]
        return torch.cat(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"


EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(prefix: str) -> Callable[[Callable[..., FeatureExtractor]], Callable[..., FeatureExtractor]]:
    """Class decorator: make ``prefix[:argument]`` names build this extractor as ``cls(argument, device=...)``."""
    def add(cls: Callable[..., FeatureExtractor]) -> Callable[..., FeatureExtractor]:
        EXTRACTORS[prefix] = cls
        return cls
    return add


def create_extractor(name: str | FeatureExtractor, device: str | torch.device | None = None) -> FeatureExtractor:
    """Build the extractor a name describes (see the module docstring); an extractor passes through."""
    if isinstance(name, FeatureExtractor):
        return name
    prefix, _, argument = str(name).partition(":")
    if prefix not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; known: "
                         f"{', '.join(sorted(EXTRACTORS))} (e.g. 'inception', 'clip:ViT-B-32:openai', "
                         "'dinov2:facebook/dinov2-base', 'domain:runs/x/real/classifier')")
    return EXTRACTORS[prefix](argument, device=torch.device(device) if device else default_device())


# --------------------------------------------------------------------------------------------- inception

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]


def default_inception_weights() -> Path:
    """Where torch-fidelity and torchmetrics cache the FID Inception weights (torch hub checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def _inception_layers() -> dict[str, torch.nn.Module]:
    """The layers of torch-fidelity's FID Inception-v3, named and built exactly as its ``__init__`` does."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf

    return {
        "Conv2d_1a_3x3": tf.BasicConv2d(3, 32, kernel_size=3, stride=2),
        "Conv2d_2a_3x3": tf.BasicConv2d(32, 32, kernel_size=3),
        "Conv2d_2b_3x3": tf.BasicConv2d(32, 64, kernel_size=3, padding=1),
        "MaxPool_1": torch.nn.MaxPool2d(kernel_size=3, stride=2),
        "Conv2d_3b_1x1": tf.BasicConv2d(64, 80, kernel_size=1),
        "Conv2d_4a_3x3": tf.BasicConv2d(80, 192, kernel_size=3),
        "MaxPool_2": torch.nn.MaxPool2d(kernel_size=3, stride=2),
        "Mixed_5b": tf.InceptionA(192, pool_features=32),
        "Mixed_5c": tf.InceptionA(256, pool_features=64),
        "Mixed_5d": tf.InceptionA(288, pool_features=64),
        "Mixed_6a": tf.InceptionB(288),
        "Mixed_6b": tf.InceptionC(768, channels_7x7=128),
        "Mixed_6c": tf.InceptionC(768, channels_7x7=160),
        "Mixed_6d": tf.InceptionC(768, channels_7x7=160),
        "Mixed_6e": tf.InceptionC(768, channels_7x7=192),
        "Mixed_7a": tf.InceptionD(768),
        "Mixed_7b": tf.InceptionE_1(1280),
        "Mixed_7c": tf.InceptionE_2(2048),
        "AvgPool": torch.nn.AdaptiveAvgPool2d(output_size=(1, 1)),
        "fc": torch.nn.Linear(2048, 1008),
    }


def inception_network(state: dict[str, Any], path: Path) -> torch.nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` (2048-d pool features) holding ``state``, float32, eval.

    Its own ``__init__`` is not run: it reads the weights itself with ``torch.load(weights_only=False)``
    or downloads them. The instance gets its layers from ``_inception_layers`` instead (built on the meta
    device, so no random init is computed), then ``state`` strictly, so its ``forward`` is torch-fidelity's.
    A state that does not fit (``path`` is named) is a ``ValueError``.
    """
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    model = FeatureExtractorInceptionV3.__new__(FeatureExtractorInceptionV3)
    FeatureExtractorBase.__init__(model, "inception-v3-compat", ["2048"])
    model.feature_extractor_internal_dtype = torch.float32
    with torch.device("meta"):
        for name, layer in _inception_layers().items():
            model.add_module(name, layer)
    _check_inception_state(state, model.state_dict(), path)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # what the key/shape check cannot see, e.g. metadata of another version
        raise ValueError(f"{path}: not the FID Inception weights ({first_line(exc)}); expected {INCEPTION_FILE} "
                         f"from {INCEPTION_URL}") from exc
    return model.to(torch.float32).requires_grad_(False).eval()


def _check_inception_state(state: dict[str, Any], expected: dict[str, torch.Tensor], path: Path) -> None:
    """One-line ``ValueError`` when ``state`` has other keys, shapes or non-tensor values than ``expected``.

    BatchNorm's ``num_batches_tracked`` may be absent: the published file is a plain dict converted from
    TensorFlow without them, and BatchNorm fills them in when loading a state dict without version metadata.
    """
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and not (isinstance(state[k], torch.Tensor)
                                                        and state[k].shape == expected[k].shape)]
    if missing or unexpected or wrong:
        found = ", ".join(f"{len(keys)} {kind} (e.g. {keys[0]})" for kind, keys in
                          (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
                          if keys)
        raise ValueError(f"{path}: not the FID Inception weights ({found}); expected {INCEPTION_FILE} "
                         f"from {INCEPTION_URL}")


@register_extractor("inception")
class InceptionExtractor(FeatureExtractor):
    """FID Inception-v3 pool features (2048-d) from torch-fidelity's port of the TensorFlow graph."""

    size = 299

    def __init__(self, weights: str = "", device: torch.device | None = None) -> None:
        path = Path(weights).expanduser() if weights else default_inception_weights()
        if not path.is_file():
            where = f"the path you gave, {path}" if weights else f"{path}"
            raise FileNotFoundError(
                f"Inception FID weights not found at {path}. Nothing is downloaded automatically: fetch "
                f"{INCEPTION_URL} on a machine with internet and put the file at {where} "
                f"(or pass 'inception:/path/to/{INCEPTION_FILE}').")
        self.device = device or default_device()
        # The digest comes first: a file whose name claims the published hash is checked before any of
        # its bytes are unpickled, and the id names exactly the bytes that were then loaded.
        digest = file_digest(path)
        check_claimed_digest(path, digest, "Inception FID weights", hint=f"fetch {INCEPTION_URL} again")
        state = load_torch_file(path, "Inception FID weights")
        self.model = inception_network(state, path).to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.name = f"inception:{path}" if weights else "inception"
        self.id = f"inception-v3-fid:{digest[:16]}"
        self.preprocessing = f"rgb|pil-bicubic-uint8-{self.size}x{self.size}|no-crop|uint8"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return to_uint8_tensor(clean_resize(image, (self.size, self.size)))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)[0]


# --------------------------------------------------------------------------------------------- CLIP

def _cached_open_clip_file(tag_cfg: dict[str, Any]) -> Path | None:
    """The local file an open_clip pretrained tag resolves to, if already cached; never downloads."""
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)  # "org/model/" names the default file, "org/model/f.bin" one file
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    url = tag_cfg.get("url", "")
    if url:
        candidate = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if candidate.is_file():
            return candidate
    return None


@register_extractor("clip")
class ClipExtractor(FeatureExtractor):
    """open_clip image (and text) embeddings, L2-normalised."""

    def __init__(self, spec: str, device: torch.device | None = None) -> None:
        import open_clip

        self.device = device or default_device()
        if not spec:
            raise ValueError("clip needs a model: 'clip:<model>:<pretrained tag or checkpoint file>' "
                             "or 'clip:<folder with open_clip_config.json and weights>'")
        options: dict[str, Any] = {}
        if spec.startswith("local-dir:") or Path(spec).expanduser().is_dir():
            folder = Path(spec.removeprefix("local-dir:")).expanduser()
            if not (folder / "open_clip_config.json").is_file():
                raise FileNotFoundError(f"{folder}: no open_clip_config.json; a clip folder needs the config "
                                        "and the weights (open_clip_model.safetensors or open_clip_pytorch_model.bin)")
            weights = [p for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".bin", ".pth", ".pt")]
            if not weights:
                raise FileNotFoundError(f"{folder}: no weights file (*.safetensors, *.bin, *.pth) next to "
                                        "open_clip_config.json; a model without weights would be random")
            model_name, pretrained, weights_id = f"local-dir:{folder}", None, folder_digest(
                folder, ("*.json", "*.safetensors", "*.bin", "*.pth", "*.pt"))
            source = pickle_files(folder)  # open_clip prefers safetensors: only a pickle file can be refused
            self.name = f"clip:{folder}"
        else:
            model_name, _, pretrained = spec.partition(":")
            if not pretrained:
                raise ValueError(f"clip:{spec} names no weights (open_clip would build a random model); use "
                                 f"'clip:{spec}:<pretrained tag>' (e.g. openai, laion2b_s34b_b79k) or "
                                 f"'clip:{spec}:/path/to/checkpoint'")
            if open_clip.get_model_config(model_name) is None:
                raise ValueError(f"clip: unknown open_clip model {model_name!r}; see open_clip.list_models()")
            path = Path(pretrained).expanduser()
            tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
            if path.is_file():
                weights_file = path
            elif tag_cfg:
                found = _cached_open_clip_file(tag_cfg)
                if found is None:
                    hub, url = tag_cfg.get("hf_hub", ""), tag_cfg.get("url", "")
                    how = (f"`hf download {hub.rstrip('/')}` (into the Hugging Face cache)" if hub
                           else f"{url} into ~/.cache/clip/")
                    raise FileNotFoundError(
                        f"CLIP weights for {model_name} tag {pretrained!r} are not in the local cache and "
                        f"nothing is downloaded automatically. On a machine with internet run {how}, or "
                        f"download the checkpoint anywhere and use 'clip:{model_name}:/path/to/checkpoint'.")
                weights_file = found
                options["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
                options["force_preprocess_cfg"] = {k: tag_cfg[k] for k in
                                                   ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
            else:
                raise FileNotFoundError(
                    f"clip:{spec}: {pretrained!r} is neither a file nor a pretrained tag of {model_name} "
                    f"(tags: {open_clip.list_pretrained_tags_by_model(model_name)})")
            pretrained = source = str(weights_file)
            weights_id = file_digest(weights_file)
            self.name = f"clip:{spec}"
        with refusing_pickles(source, f"clip:{spec} weights"):
            try:
                # weights_only=True is open_clip's default; passed so that a changed default cannot loosen it
                model = open_clip.create_model(model_name, pretrained=pretrained, device="cpu",
                                               weights_only=True, **options)
            except (RuntimeError, ValueError, OSError) as exc:
                raise ValueError(f"clip:{spec}: open_clip could not load the model ({first_line(exc)})") from exc
        self.model = model.eval().to(self.device)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg["size"]
        self.size = int(size if isinstance(size, int) else size[0])
        self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        arch = model_name.rsplit("/", 1)[-1]
        self.id = f"clip:{arch}:{weights_id[:16]}:unit-norm"
        self.preprocessing = (f"rgb|pil-bicubic-uint8-shorter-{self.size}|center-crop-{self.size}|"
                              f"normalize(mean={self.mean},std={self.std})")

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return to_normalized_tensor(resize_shorter_and_crop(image, self.size), self.mean, self.std)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.model.encode_image(batch).float(), dim=-1)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Unit-norm text embeddings (len(texts), D), float32 on CPU."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings, not one string")
        parts = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size])).to(self.device)
            parts.append(torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        if not parts:
            raise ValueError("encode_text: no texts given")
        return torch.cat(parts)


# --------------------------------------------------------------------------------------------- DINOv2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@register_extractor("dinov2")
class Dinov2Extractor(FeatureExtractor):
    """DINOv2 (transformers) CLS features after the final layer norm (``pooler_output``)."""

    def __init__(self, spec: str, device: torch.device | None = None, size: int = 224) -> None:
        from transformers import AutoModel

        self.device = device or default_device()
        if not spec:
            raise ValueError("dinov2 needs a model: 'dinov2:<save_pretrained folder>' or "
                             "'dinov2:<hub name already in the local cache, e.g. facebook/dinov2-base>'")
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            try:
                folder = Path(snapshot_download(spec, local_files_only=True))
            except Exception as exc:  # not cached / not a repo name: say what to do
                raise FileNotFoundError(
                    f"dinov2:{spec}: no such folder and not in the local Hugging Face cache; nothing is "
                    f"downloaded automatically. On a machine with internet run `hf download "
                    f"{spec}` (or save_pretrained the model to a folder) and use 'dinov2:<folder>'.") from exc
        with refusing_pickles(pickle_files(folder), f"dinov2:{spec} weights"):
            try:
                model = AutoModel.from_pretrained(folder, local_files_only=True, weights_only=True)
            except (OSError, ValueError) as exc:
                raise FileNotFoundError(f"dinov2:{spec}: {folder} does not hold a loadable model "
                                        f"({first_line(exc)})") from exc
        self.model = model.eval().to(self.device)
        self.size = size
        self.name = f"dinov2:{spec}"
        weights = folder_digest(folder, ("config.json", "*.safetensors", "*.bin"))
        self.id = f"dinov2:{type(model).__name__}:{weights[:16]}:pooler"
        self.preprocessing = (f"rgb|pil-bicubic-uint8-{size}x{size}|no-crop|"
                              f"normalize(mean={IMAGENET_MEAN},std={IMAGENET_STD})")

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return to_normalized_tensor(clean_resize(image, (self.size, self.size)), IMAGENET_MEAN, IMAGENET_STD)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=batch).pooler_output


# --------------------------------------------------------------------------------------------- domain

@register_extractor("domain")
class DomainExtractor(FeatureExtractor):
    """Penultimate-layer features of an imgsynth classifier checkpoint (the offline default).

    Preprocessing is the classifier's own, stored in its checkpoint (mode, size, mean/std; PIL bicubic
    resize on the uint8 image, the same convention as the other extractors), because features are only
    meaningful for input prepared the way the classifier was trained.
    """

    def __init__(self, checkpoint: str, device: torch.device | None = None) -> None:
        from imgsynth.classifier import load_classifier

        if not checkpoint:
            raise ValueError("domain needs a classifier checkpoint: 'domain:<folder written by train_classifier>'")
        self.device = device or default_device()
        self.loaded = load_classifier(Path(checkpoint).expanduser(), device=self.device)
        self.name = f"domain:{checkpoint}"
        weights = folder_digest(self.loaded.path, ("*.json", "*.safetensors"))
        self.id = f"domain:{self.loaded.arch}:{weights[:16]}"
        self.preprocessing = "classifier:" + json.dumps(self.loaded.preprocessing.to_dict(), sort_keys=True)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.loaded.preprocess(image)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.loaded.features(batch)

    def extract(self, images: ImageSet | Sequence[Image.Image], batch_size: int = 64,
                num_workers: int = 0) -> torch.Tensor:
        from imgsynth.classifier import penultimate_features

        if len(images) == 0:
            raise ValueError(f"{self.name}: no images to extract features from")
        return penultimate_features(self.loaded, images, batch_size=batch_size).float().cpu()


# --------------------------------------------------------------------------------------------- pixels

@register_extractor("pixels")
class PixelExtractor(FeatureExtractor):
    """The raw pixels (C·H·W values in [0, 1]) at the set's own size: no model, no resize.

    Meaningful for tiny images and for the exact-theory generators, whose model *is* a distribution over
    these vectors (FID in this space is the Fréchet distance between the fitted Gaussians).
    """

    def __init__(self, argument: str = "", device: torch.device | None = None) -> None:
        if argument:
            raise ValueError(f"pixels takes no argument, got 'pixels:{argument}'")
        self.device = torch.device("cpu")
        self.name, self.id, self.preprocessing = "pixels", "pixels:v1", "as-stored|uint8/255|flatten"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image, dtype=np.float32).reshape(-1) / 255.0)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch


# --------------------------------------------------------------------------------------------- cache

def feature_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The features folder: ``cache_dir`` if given, else ``$IMGSYNTH_CACHE/features``, else ~/.cache/imgsynth/features."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("IMGSYNTH_CACHE")
    return (Path(root).expanduser() if root else Path("~/.cache/imgsynth").expanduser()) / "features"


def feature_cache_key(image_set: ImageSet, extractor: FeatureExtractor) -> str:
    """Hash of (set id, row order, extractor id, preprocessing): equal keys mean equal feature matrices."""
    order = hashlib.sha256("".join(f"{r.sha256}\t{r.label}\n" for r in image_set.records).encode()).hexdigest()
    payload = json.dumps({"format": CACHE_FORMAT, "set": image_set.id, "order": order, "extractor": extractor.id,
                          "preprocessing": extractor.preprocessing}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def cached_features(image_set: ImageSet, extractor: FeatureExtractor | str, cache_dir: str | os.PathLike | None = None,
                    batch_size: int = 64, device: str | torch.device | None = None) -> torch.Tensor:
    """Features of ``image_set`` (float32 CPU, one row per image in set order), computed once and cached.

    A cached file is used only if its recorded set id, extractor id, preprocessing and row count all
    match; anything else (a stale or truncated file) is recomputed and replaced atomically.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open, save_file

    extractor = create_extractor(extractor, device)
    folder = feature_cache_dir(cache_dir)
    key = feature_cache_key(image_set, extractor)
    path = folder / f"{key}.safetensors"
    expected = {"set_id": image_set.id, "extractor_id": extractor.id, "preprocessing": extractor.preprocessing,
                "n": str(len(image_set))}
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            if all(metadata.get(k) == v for k, v in expected.items()):
                features = load_file(str(path))["features"]
                if features.shape[0] == len(image_set):
                    # The key is the recorded hashes: the files must still be those bytes to use it.
                    image_set.check_files()
                    return features
        except (SafetensorError, OSError, KeyError):
            pass  # unreadable cache entry: recompute below
    features = extractor.extract(image_set, batch_size=batch_size).contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    save_file({"features": features}, str(tmp), metadata=expected)
    os.replace(tmp, path)
    return features
