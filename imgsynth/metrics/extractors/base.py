"""The extractor base class and ``create_extractor``, which builds one from its name."""

from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import torch
from PIL import Image

from imgsynth.imageset import ImageSet
from imgsynth.metrics.extractors.registry import EXTRACTORS, check_resize_mode, offered_resize_modes
from imgsynth.metrics.registry import FEATURES


def default_device() -> torch.device:
    """cuda when available, else cpu."""
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

    Subclasses set ``name`` (the name it was built from), ``id`` (name plus a weights hash: equal ids
    give equal features), ``preprocessing`` (a description of what ``preprocess`` does), and implement
    ``preprocess(PIL image) -> tensor`` and ``forward(batch) -> (B, D) tensor``.

    ``resize_modes`` lists the resize conventions (``registry.RESIZE_MODES``) the class can be built with
    (``cls(argument, device=..., resize_mode=...)``); ``resize_mode`` is the one an instance uses, None for an
    extractor whose preprocessing is its own (a classifier's, CLIP's crop). It is what records of features
    (stats files, reports) name as the convention.

    ``supplies`` says what the extractor offers the metrics (``imgsynth.metrics.registry`` needs): image
    features always; an extractor of a joint image–text space adds ``TEXT_ENCODER`` and implements
    ``encode_text``, which enables the metrics that need one (CLIP score, CMMD, ``clip_diversity``).
    """

    name: str
    id: str
    preprocessing: str
    device: torch.device
    supplies: ClassVar[frozenset[str]] = frozenset({FEATURES})
    resize_modes: ClassVar[tuple[str, ...]] = ()
    resize_mode: str | None = None

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

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings in the image features' space (extractors that supply a text encoder)."""
        raise NotImplementedError(f"{self.name} embeds no text: it does not supply a text encoder")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"


def create_extractor(name: str | FeatureExtractor, device: str | torch.device | None = None, *,
                     resize_mode: str | None = None) -> FeatureExtractor:
    """Build the extractor a name describes (``imgsynth.metrics.features`` lists them); an extractor passes through.

    ``resize_mode`` (one of ``registry.RESIZE_MODES``; None: the extractor's default) is refused, naming the
    extractor and what it offers, when the extractor has no such convention, before any weights load; an
    extractor passed in must already use it.
    """
    if isinstance(name, FeatureExtractor):
        if resize_mode is not None and name.resize_mode != resize_mode:
            raise ValueError(f"{name.name} resizes by {name.resize_mode or 'its own preprocessing'}, "
                             f"not {resize_mode!r}; build it with that resize mode")
        return name
    prefix, _, argument = str(name).partition(":")
    if prefix not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; known: "
                         f"{', '.join(sorted(EXTRACTORS))} (e.g. 'inception', 'clip:ViT-B-32:openai', "
                         "'dinov2:facebook/dinov2-base', 'domain:runs/x/real/classifier')")
    built = torch.device(device) if device else default_device()
    if resize_mode is None:
        return EXTRACTORS[prefix](argument, device=built)
    check_resize_mode(resize_mode)
    offered = offered_resize_modes(prefix)
    if resize_mode not in offered:
        raise ValueError(f"feature extractor {name!r} cannot resize by {resize_mode!r}: "
                         + (f"it offers {', '.join(offered)}" if offered else
                            "its preprocessing is its own (resize modes are for inception)"))
    return EXTRACTORS[prefix](argument, device=built, resize_mode=resize_mode)
