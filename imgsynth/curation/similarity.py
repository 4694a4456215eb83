"""Image embeddings for near-duplicate search, and chunked cosine nearest-neighbour search over them.

The built-in embedding is a perceptual pixel vector (``pixels:<size>``): the image in grayscale,
resized with antialiasing to a fixed ``size``×``size``, mean-centred and scaled to unit length, so
the cosine similarity of two images is the correlation of their thumbnails. 8×8 is the resolution
the classic perceptual hashes (aHash, dHash, pHash's low DCT band) work at; keeping real values
rather than one bit per cell keeps the margin between re-encoded copies and distinct images. A fixed
size makes the vector blind to JPEG block noise and to resizing by a pixel (both live above the
thumbnail's frequencies), which is what the contamination audit needs. Any extractor of
``imgsynth.metrics.features`` (``domain:<ckpt>``, ``clip:…``) can be used instead; its rows are
normalised the same way.

Search works in chunks of queries × chunks of references so memory stays at
``chunk × chunk`` similarities whatever the number of images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
from PIL import Image

from imgsynth.imageset import ImageSet

PIXELS = "pixels"
DEFAULT_PIXEL_SIZE = 8
# Thumbnails are held for the whole set at once (size² floats an image, ×3 for rgb): beyond this a typo
# such as pixels:100000 would exhaust memory instead of failing. Recipes share the bound (MAX_IMAGE_SIZE).
MAX_PIXEL_SIZE = 1024
CHUNK = 2048


class Extractor(Protocol):
    """What curation needs of a feature extractor: a stable id and a batch of images → features."""

    id: str

    def extract(self, images: Any) -> Any: ...


@dataclass(frozen=True)
class PixelEmbedding:
    """Perceptual thumbnail vector: grayscale (or per channel), ``size``×``size``, mean-centred, unit norm."""

    size: int = DEFAULT_PIXEL_SIZE
    grayscale: bool = True

    def __post_init__(self) -> None:
        if not 2 <= self.size <= MAX_PIXEL_SIZE:
            raise ValueError(f"pixel embedding size must be at least 2 and at most {MAX_PIXEL_SIZE}, got {self.size}")

    @property
    def id(self) -> str:
        return f"{PIXELS}:{self.size}" + ("" if self.grayscale else ":rgb")

    def embed_image(self, image: Image.Image) -> np.ndarray:
        image = image.convert("L" if self.grayscale else "RGB")
        # BILINEAR with PIL's antialiasing averages every source pixel into the thumbnail, so a
        # one-pixel change of size moves the thumbnail by a fraction of a cell, not a whole one.
        thumb = np.asarray(image.resize((self.size, self.size), Image.Resampling.BILINEAR), dtype=np.float32)
        vector = thumb.reshape(-1) - thumb.mean()
        norm = float(np.linalg.norm(vector))
        # A flat image has no structure to compare; a zero vector matches nothing.
        return vector / norm if norm > 1e-6 else np.zeros_like(vector)

    def extract(self, images: Iterable[Image.Image]) -> np.ndarray:
        rows = [self.embed_image(image) for image in images]
        if not rows:
            return np.zeros((0, self.size * self.size * (1 if self.grayscale else 3)), dtype=np.float32)
        return np.stack(rows)


def parse_pixel_spec(name: str) -> PixelEmbedding | None:
    """``pixels`` / ``pixels:<size>`` / ``pixels:<size>:rgb`` → a PixelEmbedding; anything else → None."""
    parts = name.split(":")
    if parts[0] != PIXELS:
        return None
    try:
        size = int(parts[1]) if len(parts) > 1 and parts[1] else DEFAULT_PIXEL_SIZE
    except ValueError:
        raise ValueError(f"embedding {name!r}: expected pixels:<size>, e.g. pixels:8") from None
    if len(parts) > 3 or (len(parts) == 3 and parts[2] != "rgb"):
        raise ValueError(f"embedding {name!r}: expected pixels, pixels:<size> or pixels:<size>:rgb")
    try:
        return PixelEmbedding(size, grayscale=len(parts) < 3)
    except ValueError as exc:
        raise ValueError(f"embedding {name!r}: {exc}") from None


def resolve_embedding(spec: str | Extractor) -> Extractor:
    """A built-in ``pixels…`` embedding, an extractor object, or a name from the metrics registry."""
    if not isinstance(spec, str):
        return spec
    pixel = parse_pixel_spec(spec)
    if pixel is not None:
        return pixel
    from imgsynth.metrics.features import create_extractor

    return create_extractor(spec)


def embed_images(images: ImageSet, extractor: Extractor, indices: Sequence[int] | None = None,
                 batch_size: int = 256) -> np.ndarray:
    """Unit-length float32 embeddings of the images at ``indices`` (all by default), in that order."""
    indices = list(range(len(images))) if indices is None else list(indices)
    if isinstance(extractor, PixelEmbedding):
        features = extractor.extract(images.load_image(i) for i in indices)
    else:
        chunks = []
        for start in range(0, len(indices), batch_size):
            batch = [images.load_image(i) for i in indices[start:start + batch_size]]
            chunks.append(as_numpy(extractor.extract(batch)))
        features = np.concatenate(chunks) if chunks else np.zeros((0, 1), dtype=np.float32)
    return normalize_rows(np.asarray(features, dtype=np.float32))


def as_numpy(values: Any) -> np.ndarray:
    """Features as a float32 numpy array, whether the extractor returned a tensor or an array."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def normalize_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero) so dot products are cosine similarities."""
    features = features.reshape(len(features), -1).astype(np.float32, copy=False)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 1e-12)


def nearest_neighbours(queries: np.ndarray, references: np.ndarray,
                       chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """For every query row, the most similar reference row: (index, cosine similarity).

    Both inputs must be unit-length rows. Ties go to the lowest reference index, so the answer is
    deterministic. With no references every index is -1 and every similarity -inf.
    """
    best_index = np.full(len(queries), -1, dtype=np.int64)
    best_sim = np.full(len(queries), -np.inf, dtype=np.float32)
    for q0 in range(0, len(queries), chunk):
        q = queries[q0:q0 + chunk]
        for r0 in range(0, len(references), chunk):
            sims = q @ references[r0:r0 + chunk].T
            local = sims.argmax(axis=1)
            local_sim = sims[np.arange(len(q)), local]
            better = local_sim > best_sim[q0:q0 + chunk]
            best_sim[q0:q0 + chunk][better] = local_sim[better]
            best_index[q0:q0 + chunk][better] = local[better] + r0
    return best_index, best_sim


def greedy_dedup(embeddings: np.ndarray, threshold: float,
                 chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the first image of every near-duplicate group, in the given order.

    An image is dropped when its cosine similarity to an image already kept is ≥ ``threshold``;
    returns ``(kept mask, duplicate_of, similarity)`` where ``duplicate_of[i]`` is the kept image
    that caused the drop (-1 for kept ones) and ``similarity[i]`` its similarity (0 for kept ones). Images are visited in row order and
    compared against kept images only, so a chain a~b~c with a≁c keeps a and c. Work is done a chunk
    at a time: each chunk is compared with all images kept before it (in reference chunks), then
    resolved in order within itself.
    """
    n = len(embeddings)
    kept = np.zeros(n, dtype=bool)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    similarity = np.zeros(n, dtype=np.float32)
    kept_indices: list[int] = []
    for start in range(0, n, chunk):
        block = embeddings[start:start + chunk]
        earlier = np.asarray(kept_indices, dtype=np.int64)
        prior_index, prior_sim = nearest_neighbours(block, embeddings[earlier], chunk) if len(earlier) else \
            (np.full(len(block), -1), np.full(len(block), -np.inf, dtype=np.float32))
        within = block @ block.T
        kept_here: list[int] = []
        for offset in range(len(block)):
            i = start + offset
            if prior_sim[offset] >= threshold:
                duplicate_of[i], similarity[i] = earlier[prior_index[offset]], prior_sim[offset]
                continue
            if kept_here:
                sims = within[offset, kept_here]
                j = int(sims.argmax())
                if sims[j] >= threshold:
                    duplicate_of[i], similarity[i] = start + kept_here[j], sims[j]
                    continue
            kept_here.append(offset)
            kept[i] = True
        kept_indices.extend(start + o for o in kept_here)
    return kept, duplicate_of, similarity
