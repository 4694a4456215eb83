"""Tiny, random-init, fully offline stand-ins for pretrained models, for tests and smoke checks.

``tiny_text2image_pipeline(path)`` writes a complete Stable Diffusion pipeline folder (UNet, VAE, CLIP
text encoder, tokenizer, scheduler) of a few hundred kilobytes. It is saved with ``save_pretrained``, so
everything that loads it (``imgsynth generate``, ``imgsynth finetune``) goes through exactly the same
code as for a real model from the Hub. Its images are noise-like, but deterministic: weights come from a
fixed seed, so two builds give byte-identical weights.

``random_fid_inception(path)`` saves a randomly initialised FID Inception (torch-fidelity's layout, which
pytorch-fid's matches) for checking the resize conventions without the real weights' download.

``png_without_xmp(data)`` takes a generated image's XMP marker out again, to compare its bytes with those of
images written before generated PNGs carried one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

# Byte-level BPE as CLIP does it: every byte maps to a printable unicode character, words end in "</w>".
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
# A handful of merges so common letter pairs become one token; the tokenizer is valid without any.
_MERGES = ("t h", "i n", "e r", "a n", "o n", "r e", "th e</w>", "in g</w>", "o r", "e n")


def _bytes_to_unicode() -> list[str]:
    """The 256 printable characters GPT-2/CLIP byte-level BPE uses for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_tiny_clip_tokenizer(folder: str | Path, model_max_length: int = 77) -> Path:
    """Write vocab.json + merges.txt of a character-level CLIP tokenizer (with a few merges) to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols]
    for merge in _MERGES:
        tokens.append(merge.replace(" ", ""))
    tokens += [_BOS, _EOS]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
        "bos_token": _BOS, "eos_token": _EOS, "unk_token": _EOS, "pad_token": _EOS,
    }), encoding="utf-8")
    return folder


def tiny_text2image_pipeline(path: str | Path, *, sample_size: int = 8, seed: int = 0) -> Path:
    """Build and save a tiny random-init ``StableDiffusionPipeline`` at ``path``; returns ``path``.

    The UNet has two levels of 32/64 channels and cross-attention width 32, the VAE halves the
    resolution (``sample_size`` latents → ``2 * sample_size`` pixel images), the text encoder is a
    two-layer CLIP of width 32. Nothing is downloaded. In transformers 5 ``CLIPTokenizer(vocab_file=…)``
    ignores the file, so the tokenizer files are written to a folder and loaded with ``from_pretrained``.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tiny_clip_tokenizer(tmp))
    # Seed each component separately so changing one never shifts another's weights.
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=sample_size,
        in_channels=4, out_channels=4, norm_num_groups=32, cross_attention_dim=32, attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32,
        sample_size=2 * sample_size,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, layer_norm_eps=1e-5, vocab_size=len(tokenizer), max_position_embeddings=77,
        projection_dim=32,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def tiny_caption_model(path: str | Path, *, seed: int = 0) -> Path:
    """Build and save a tiny random-init GPT-2 (byte-level tokenizer, two layers of width 32) at ``path``.

    For exercising ``--caption-model`` offline: its rewrites are gibberish, but deterministic.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        vocab = {symbol: i for i, symbol in enumerate(_bytes_to_unicode())}
        vocab[_EOS] = len(vocab)
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "GPT2Tokenizer", "model_max_length": 256, "bos_token": _EOS, "eos_token": _EOS,
            "unk_token": _EOS}), encoding="utf-8")
        tokenizer = GPT2Tokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def png_without_xmp(data: bytes) -> bytes:
    """A PNG's bytes without its XMP iTXt chunk (PNG spec: 8-byte signature, then length, type, data, CRC each)."""
    out, position = [data[:8]], 8
    while position < len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        chunk = data[position:position + 12 + length]
        if not (chunk[4:8] == b"iTXt" and chunk[8:].startswith(b"XML:com.adobe.xmp\0")):
            out.append(chunk)
        position += 12 + length
    return b"".join(out)


def random_fid_inception(path: str | Path, seed: int = 0) -> Path:
    """A He-initialised FID Inception state dict in torch-fidelity's layout, saved at ``path`` (needs
    torch-fidelity; nothing is downloaded: its loader is bypassed while the network is built)."""
    from unittest import mock

    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as module

    with mock.patch.object(module, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(module.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        model = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    generator = torch.Generator().manual_seed(seed)
    for layer in model.modules():
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
    torch.save(model.state_dict(), path)
    return Path(path)
