"""Image–text alignment: CLIP score."""

from __future__ import annotations

from typing import Any

import torch

from imgsynth.metrics.inputs import as_features, same_width, unit_rows

F64 = torch.float64
CLIP_SCORE_SCALE = 100.0


def clip_score_per_sample(image_embeddings: Any, text_embeddings: Any,
                          scale: float = CLIP_SCORE_SCALE) -> torch.Tensor:
    """``scale · max(cos(image_i, text_i), 0)`` for each aligned image/text pair (float64 tensor)."""
    images = as_features(image_embeddings, "image_embeddings", min_samples=1, dtype=F64)
    texts = as_features(text_embeddings, "text_embeddings", min_samples=1, dtype=F64, device=images.device)
    same_width(images, texts, ("image_embeddings", "text_embeddings"))
    if images.shape[0] != texts.shape[0]:
        raise ValueError(f"CLIP score pairs image i with text i: got {images.shape[0]} images and "
                         f"{texts.shape[0]} texts")
    cosine = (unit_rows(images, "image_embeddings") * unit_rows(texts, "text_embeddings")).sum(dim=1)
    return scale * cosine.clamp_min(0)


def clip_score(image_embeddings: Any, text_embeddings: Any, scale: float = CLIP_SCORE_SCALE) -> float:
    """CLIP score (Hessel et al. 2021): mean over pairs of ``scale · max(cos(image, text), 0)``.

    The paper's CLIP-S uses w = 2.5 (values near 0.5–1); torchmetrics' ``CLIPScore`` uses 100 (values
    near 20–35), and this follows torchmetrics so numbers compare with most recent work: divide by 40
    for the paper's scale. Image i is scored against text i (its caption or prompt).
    """
    return float(clip_score_per_sample(image_embeddings, text_embeddings, scale).mean())
