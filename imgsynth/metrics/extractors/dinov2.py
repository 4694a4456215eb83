"""``dinov2:<folder or hub name>``: transformers ``AutoModel`` (a ``save_pretrained`` folder, or a hub name
already in the local Hugging Face cache); the CLS token after the final layer norm. Images get a
224 × 224 PIL-bicubic resize of the whole image (no crop, so the border is evaluated too).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from imgsynth.metrics.extractors.base import FeatureExtractor, default_device
from imgsynth.metrics.extractors.digests import folder_digest
from imgsynth.metrics.extractors.preprocessing import clean_resize, to_normalized_tensor
from imgsynth.safe_loading import first_line, pickle_files, refusing_pickles

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Dinov2Extractor(FeatureExtractor):
    """DINOv2 (transformers) CLS features after the final layer norm (``pooler_output``)."""

    def __init__(self, argument: str, device: torch.device | None = None, size: int = 224) -> None:
        from transformers import AutoModel

        self.device = device or default_device()
        if not argument:
            raise ValueError("dinov2 needs a model: 'dinov2:<save_pretrained folder>' or "
                             "'dinov2:<hub name already in the local cache, e.g. facebook/dinov2-base>'")
        folder = Path(argument).expanduser()
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            try:
                folder = Path(snapshot_download(argument, local_files_only=True))
            except Exception as exc:  # not cached / not a repo name: say what to do
                raise FileNotFoundError(
                    f"dinov2:{argument}: no such folder and not in the local Hugging Face cache; nothing is "
                    f"downloaded automatically. On a machine with internet run `hf download "
                    f"{argument}` (or save_pretrained the model to a folder) and use 'dinov2:<folder>'.") from exc
        with refusing_pickles(pickle_files(folder), f"dinov2:{argument} weights"):
            try:
                model = AutoModel.from_pretrained(folder, local_files_only=True, weights_only=True)
            except (OSError, ValueError) as exc:
                raise FileNotFoundError(f"dinov2:{argument}: {folder} does not hold a loadable model "
                                        f"({first_line(exc)})") from exc
        self.model = model.eval().to(self.device)
        self.size = size
        self.name = f"dinov2:{argument}"
        weights = folder_digest(folder, ("config.json", "*.safetensors", "*.bin"))
        self.id = f"dinov2:{type(model).__name__}:{weights[:16]}:pooler"
        self.preprocessing = (f"rgb|pil-bicubic-uint8-{size}x{size}|no-crop|"
                              f"normalize(mean={IMAGENET_MEAN},std={IMAGENET_STD})")

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return to_normalized_tensor(clean_resize(image, (self.size, self.size)), IMAGENET_MEAN, IMAGENET_STD)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=batch).pooler_output
