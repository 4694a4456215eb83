"""Rewards that best-of-K curation ranks candidates by (higher is better), one registry: :data:`REWARDS`.

A reward is a :class:`Reward`: ``score(samples, indices, context)`` returns one float per image of
``samples`` at ``indices``, and ``needs`` says which models of the :class:`RewardContext` it uses
(``classifier``, ``clip``), so a missing one is refused before any image is scored. Built-ins:

* ``confidence`` — the probability a classifier trained on real data gives the image's own label;
* ``clip`` — the CLIP score of the image against its caption (its label when it has none), as the
  ``clip`` curation filter computes it (``100 × max(cos, 0)``);
* ``brightness`` — the mean pixel value in [0, 1]: a reward whose preference is known in closed form on
  the Gaussian kind (best of K keeps the largest of K normal draws), for checking the loop against theory.

Adding one, e.g. from a plugin or a test::

    REWARDS.register("sharpness", Reward(lambda samples, indices, context: my_scores(samples, indices)))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from imgsynth.curation.similarity import as_numpy, embed_images, resolve_embedding
from imgsynth.imageset import ImageSet
from imgsynth.registry import Registry

CLASSIFIER = "classifier"
CLIP = "clip"
REWARD_NEEDS = (CLASSIFIER, CLIP)


@dataclass(frozen=True)
class RewardContext:
    """The models a reward may use: a classifier checkpoint (or loaded classifier) trained on real data, an
    open_clip model name (or extractor object), and the batch size for either."""

    classifier: Any = None
    clip: Any = None
    batch_size: int = 256


@dataclass(frozen=True)
class Reward:
    """A registered reward: ``score(samples, indices, context)`` → float per image (higher is better)."""

    score: Callable[[ImageSet, Sequence[int], RewardContext], np.ndarray]
    needs: frozenset[str] = frozenset()
    description: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.needs) - set(REWARD_NEEDS))
        if unknown:
            raise ValueError(f"unknown reward needs {unknown}; known: {', '.join(REWARD_NEEDS)}")
        # The registry names an entry by its module and name: borrow those of ``score`` for its messages.
        object.__setattr__(self, "__module__", getattr(self.score, "__module__", __name__))
        object.__setattr__(self, "__qualname__", getattr(self.score, "__qualname__", type(self.score).__name__))

    def check(self, name: str, context: RewardContext) -> None:
        """Refuse (``ValueError`` naming the reward) a context that lacks a model this reward needs."""
        if CLASSIFIER in self.needs and context.classifier is None:
            raise ValueError(f"reward {name!r} needs a classifier trained on real data (--classifier CKPT)")
        if CLIP in self.needs and not context.clip:
            raise ValueError(f"reward {name!r} needs a CLIP model (--clip NAME, open_clip weights on disk)")


REWARDS: Registry[Reward] = Registry("reward")


def label_probabilities(samples: ImageSet, indices: Sequence[int], classifier: Any,
                        batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(probability of each image's own label, predicted class index, the classifier's classes) for the images
    at ``indices``; a class of ``samples`` the classifier does not know is a ``ValueError``."""
    from imgsynth.classifier import load_classifier, predict

    loaded = load_classifier(classifier)
    classes = list(loaded.classes)
    missing = [c for c in samples.classes if samples.counts.get(c) and c not in classes]
    if missing:
        raise ValueError(f"classifier {_name(classifier)} does not know class(es) {missing} of {samples.root}; "
                         f"its classes are {classes}")
    indices = list(indices)
    if not indices:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64), classes
    predicted, probs = predict(loaded, [samples.load_image(i) for i in indices], batch_size=batch_size)
    own = np.asarray([classes.index(samples.records[i].label) for i in indices])
    return np.asarray(probs)[np.arange(len(indices)), own], np.asarray(predicted), classes


def clip_scores(samples: ImageSet, indices: Sequence[int], clip: Any, batch_size: int = 256) -> np.ndarray:
    """CLIP score, ``100 × max(cos(image, caption), 0)`` as in ``imgsynth.metrics.alignment``, per image.

    The caption is the image's own caption, or its label when it has none. ``clip`` is an open_clip
    model name for the ``clip:`` extractor of ``imgsynth.metrics.features``, or an extractor object
    with ``extract(images)`` and ``encode_text(texts)``.
    """
    from imgsynth.metrics.alignment import clip_score_per_sample

    extractor = resolve_embedding(f"clip:{clip}") if isinstance(clip, str) else clip
    image_features = embed_images(samples, extractor, indices, batch_size)
    captions = [samples.records[i].caption or samples.records[i].label for i in indices]
    text_features = np.concatenate([as_numpy(extractor.encode_text(captions[start:start + batch_size]))
                                    for start in range(0, len(captions), batch_size)])
    return clip_score_per_sample(image_features, text_features).numpy()


def confidence_reward(samples: ImageSet, indices: Sequence[int], context: RewardContext) -> np.ndarray:
    """The classifier's probability of each image's own label."""
    return label_probabilities(samples, indices, context.classifier, context.batch_size)[0]


def clip_reward(samples: ImageSet, indices: Sequence[int], context: RewardContext) -> np.ndarray:
    """The CLIP score of each image against its caption (its label when it has none)."""
    return clip_scores(samples, indices, context.clip, context.batch_size)


def brightness_reward(samples: ImageSet, indices: Sequence[int], context: RewardContext) -> np.ndarray:
    """Mean pixel value of each image, in [0, 1] (every channel of the stored image)."""
    return np.asarray([np.asarray(samples.load_image(i), dtype=np.float64).mean() / 255.0 for i in indices])


def _name(thing: Any) -> str:
    if isinstance(thing, (str, os.PathLike)):
        return str(thing)
    return str(getattr(thing, "id", None) or getattr(thing, "path", None) or type(thing).__name__)


REWARDS.register("confidence", Reward(confidence_reward, frozenset({CLASSIFIER}),
                                      "probability a real-data classifier gives the image's own label"))
REWARDS.register("clip", Reward(clip_reward, frozenset({CLIP}), "CLIP score of the image against its caption"))
REWARDS.register("brightness", Reward(brightness_reward, description="mean pixel value in [0, 1]"))

__all__ = ["REWARDS", "Reward", "RewardContext", "clip_scores", "label_probabilities"]
