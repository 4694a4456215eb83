"""``clip:<model>:<pretrained tag or checkpoint file>`` or ``clip:<folder>``: open_clip image and text
embeddings, L2-normalised. A folder holds ``open_clip_config.json`` and the weights (open_clip's
``local-dir:`` layout). Images: shorter side to the model's size with PIL bicubic, centre crop, as
open_clip's own eval transform does with PIL input. Nothing is downloaded; pickle files are refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from PIL import Image

from imgsynth.metrics.extractors.base import FeatureExtractor, default_device
from imgsynth.metrics.extractors.digests import file_digest, folder_digest
from imgsynth.metrics.extractors.preprocessing import resize_shorter_and_crop, to_normalized_tensor
from imgsynth.metrics.registry import FEATURES, TEXT_ENCODER
from imgsynth.safe_loading import first_line, pickle_files, refusing_pickles

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


class ClipExtractor(FeatureExtractor):
    """open_clip image (and text) embeddings, L2-normalised."""

    supplies: ClassVar[frozenset[str]] = frozenset({FEATURES, TEXT_ENCODER})

    def __init__(self, argument: str, device: torch.device | None = None) -> None:
        import open_clip

        self.device = device or default_device()
        if not argument:
            raise ValueError("clip needs a model: 'clip:<model>:<pretrained tag or checkpoint file>' "
                             "or 'clip:<folder with open_clip_config.json and weights>'")
        options: dict[str, Any] = {}
        if argument.startswith("local-dir:") or Path(argument).expanduser().is_dir():
            folder = Path(argument.removeprefix("local-dir:")).expanduser()
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
            model_name, _, pretrained = argument.partition(":")
            if not pretrained:
                raise ValueError(f"clip:{argument} names no weights (open_clip would build a random model); use "
                                 f"'clip:{argument}:<pretrained tag>' (e.g. openai, laion2b_s34b_b79k) or "
                                 f"'clip:{argument}:/path/to/checkpoint'")
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
                    f"clip:{argument}: {pretrained!r} is neither a file nor a pretrained tag of {model_name} "
                    f"(tags: {open_clip.list_pretrained_tags_by_model(model_name)})")
            pretrained = source = str(weights_file)
            weights_id = file_digest(weights_file)
            self.name = f"clip:{argument}"
        with refusing_pickles(source, f"clip:{argument} weights"):
            try:
                # weights_only=True is open_clip's default; passed so that a changed default cannot loosen it
                model = open_clip.create_model(model_name, pretrained=pretrained, device="cpu",
                                               weights_only=True, **options)
            except (RuntimeError, ValueError, OSError) as exc:
                raise ValueError(f"clip:{argument}: open_clip could not load the model ({first_line(exc)})") from exc
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
