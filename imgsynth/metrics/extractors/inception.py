"""``inception`` or ``inception:<weights.pth>``: the FID Inception-v3 (torch-fidelity's
``FeatureExtractorInceptionV3``, the TensorFlow FID weights that torchmetrics also uses; pytorch-fid's port
holds the same weights under the same names), 2048-d pool features. Without a path the
weights are looked for where torch-fidelity/torchmetrics cache them.

Nothing is downloaded, and nothing is unpickled with code-running pickle: the weights are read by
imgsynth itself with ``torch.load(weights_only=True)`` after their sha256 is checked against the one a
hub-style file name claims.

Resize convention (``resize_mode``, ``registry.RESIZE_MODES``): the image goes to 299 × 299 as the tool
whose numbers are to be reproduced does it, then is normalised as that tool does: ``clean`` (the default)
is clean-fid's float PIL bicubic, then (x − 128) / 128; ``pytorch-fid`` its bilinear tensor resize of
x / 255, then 2x − 1; ``torch-fidelity`` its TensorFlow-1 bilinear resize, then (x − 128) / 128. From
there pytorch-fid's network computes what torch-fidelity's does (``tests/test_fid_conventions.py`` checks
both tools' FID; clean-fid's network is a TorchScript file it downloads, so for clean-fid the check is its
resizer's output, the network input).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from imgsynth.metrics.extractors.base import FeatureExtractor, default_device
from imgsynth.metrics.extractors.digests import file_digest
from imgsynth.metrics.extractors.preprocessing import clean_fid_resize, pytorch_fid_resize, torch_fidelity_resize
from imgsynth.metrics.extractors.registry import DEFAULT_RESIZE_MODE, RESIZE_MODES, check_resize_mode
from imgsynth.safe_loading import check_claimed_digest, first_line, load_torch_file

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


# The network input of each convention: (resize to (width, height), description) and then the normalisation.
_RESIZERS = {"clean": (clean_fid_resize, "clean-fid-pil-bicubic-float32"),
             "pytorch-fid": (pytorch_fid_resize, "div255|torch-bilinear"),
             "torch-fidelity": (torch_fidelity_resize, "tf1-bilinear")}
_NORMALISATIONS = {"clean": "(x-128)/128", "pytorch-fid": "2x-1", "torch-fidelity": "(x-128)/128"}
# torch-fidelity's forward from its first convolution to the 2048-d pool (the fc layer is for logits only).
POOL_LAYERS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
               "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
               "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool")


def pool_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, 2048) pool features of normalised 299 × 299 inputs: torch-fidelity's ``forward`` after its resize
    and normalisation (pytorch-fid's network computes the same from there)."""
    for name in POOL_LAYERS:
        x = getattr(model, name)(x)
    return torch.flatten(x, 1)


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


class InceptionExtractor(FeatureExtractor):
    """FID Inception-v3 pool features (2048-d) from torch-fidelity's port of the TensorFlow graph, fed 299 × 299
    images resized by the convention ``resize_mode`` names (one of ``RESIZE_MODES``; default clean-fid's)."""

    size = 299
    resize_modes = RESIZE_MODES

    def __init__(self, weights: str = "", device: torch.device | None = None,
                 resize_mode: str = DEFAULT_RESIZE_MODE) -> None:
        self.resize_mode = check_resize_mode(resize_mode)  # before the weights load
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
        # Equal ids give equal features: another convention is another id (the default keeps the plain one).
        mode_part = "" if self.resize_mode == DEFAULT_RESIZE_MODE else f":resize={self.resize_mode}"
        self.id = f"inception-v3-fid:{digest[:16]}{mode_part}"
        self.weights_sha256 = digest
        resize, described = _RESIZERS[self.resize_mode]
        self._resize = resize
        self.preprocessing = (f"rgb|{described}-{self.size}x{self.size}|no-crop|"
                              f"{_NORMALISATIONS[self.resize_mode]}")

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The network input before normalisation, exactly as the convention's tool computes it."""
        return self._resize(image, (self.size, self.size))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(torch.float32)
        x = 2 * x - 1 if self.resize_mode == "pytorch-fid" else (x - 128) / 128
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return pool_features(self.model, x)
