"""The compute functions of the built-in metric families (declared in ``imgsynth.metrics.registry``).

Each is ``compute(settings, candidate, [reference,] [candidate_text]) -> {name: value}``, the signature
:class:`imgsynth.metrics.registry.MetricFamily` documents, so ``evaluate`` and the bootstrap call every
family the same way.
"""

from __future__ import annotations

import torch

from imgsynth.metrics.alignment import clip_score as _clip_score
from imgsynth.metrics.distances import cmmd as _cmmd
from imgsynth.metrics.distances import frechet_distance, kid as _kid
from imgsynth.metrics.diversity import clip_diversity as _clip_diversity
from imgsynth.metrics.diversity import vendi_score
from imgsynth.metrics.fidelity import precision_recall_density_coverage
from imgsynth.metrics.registry import MetricSettings


def fid(settings: MetricSettings, candidate: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Fréchet distance of the two feature matrices."""
    return {"fid": frechet_distance(candidate, reference, progress=settings.progress)}


def kid(settings: MetricSettings, candidate: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """KID over ``settings.kid_subsets`` seeded subsets of ``settings.kid_subset_size`` rows."""
    return {"kid": _kid(candidate, reference, settings.kid_subsets, settings.kid_subset_size, settings.seed,
                        progress=settings.progress)}


def prdc(settings: MetricSettings, candidate: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Precision, recall, density and coverage with ``settings.k`` nearest neighbours."""
    return precision_recall_density_coverage(reference, candidate, settings.k, progress=settings.progress)


def cmmd(settings: MetricSettings, candidate: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """CMMD of two CLIP embedding matrices."""
    return {"cmmd": _cmmd(candidate, reference, progress=settings.progress)}


def diversity(settings: MetricSettings, candidate: torch.Tensor) -> dict[str, float]:
    """Mean pairwise cosine distance of any features."""
    return {"diversity": _clip_diversity(candidate)}


def clip_diversity(settings: MetricSettings, candidate: torch.Tensor) -> dict[str, float]:
    """The same mean pairwise cosine distance, of CLIP embeddings."""
    return {"clip_diversity": _clip_diversity(candidate)}


def vendi(settings: MetricSettings, candidate: torch.Tensor) -> dict[str, float]:
    """Vendi score with the cosine kernel."""
    return {"vendi": vendi_score(candidate)}


def clip_score(settings: MetricSettings, candidate: torch.Tensor, candidate_text: torch.Tensor) -> dict[str, float]:
    """CLIP score of each image embedding against its caption's text embedding."""
    return {"clip_score": _clip_score(candidate, candidate_text)}
