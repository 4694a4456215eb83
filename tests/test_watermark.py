"""Issue 25, item 3: the opt-in invisible watermark (invisible-watermark's DWT-DCT, as SDXL pipelines embed)."""

from __future__ import annotations

import numpy as np
import pytest
from imwatermark import WatermarkDecoder
from PIL import Image

from imgsynth.imageset import ImageSetWriter, Sample
from imgsynth.notes import Note
from imgsynth.provenance.markers import Marking
from imgsynth.provenance.markers.reading import read_markers
from imgsynth.provenance.markers.watermark import IMGSYNTH_MESSAGE, SDXL_MESSAGE, embed, message_bits


def _textured(seed: int, size: int = 256) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    return small.resize((size, size), Image.Resampling.BICUBIC)


def test_watermarked_sets_carry_imgsynths_message_and_say_so(tmp_path):
    writer = ImageSetWriter(tmp_path / "set", ["a"], kind="generated", generator={"kind": "test"},
                            marking=Marking(watermark=True))
    writer.write_all([Sample(_textured(i), "a", seed=i, image_id=f"i{i}") for i in range(2)])
    image_set = writer.finalize()
    assert image_set.manifest["markers"]["watermark"]["message"] == f"{IMGSYNTH_MESSAGE:012x}"
    assert image_set.manifest["markers"]["watermark"]["images"] == 2
    for index in range(2):
        image = image_set.load_image(index)
        bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
        bits = WatermarkDecoder("bits", 48).decode(bgr, "dwtDct")  # the library's own decoder
        assert sum(int(a) != b for a, b in zip(bits, message_bits(IMGSYNTH_MESSAGE))) <= 2
        assert read_markers(image_set.read_bytes(index), c2pa=False).watermark.name == "imgsynth"
        assert image_set.records[index].extra["watermarked"] is True


def test_sdxl_message_is_recognised_and_unmarked_images_are_not():
    import io

    marked, plain = embed(_textured(7), SDXL_MESSAGE), _textured(8)
    for image, expected in ((marked, "sdxl"), (plain, None)):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        assert read_markers(buffer.getvalue(), c2pa=False).watermark.name == expected


def test_small_images_get_one_note_and_no_watermark(tmp_path):
    writer = ImageSetWriter(tmp_path / "small", ["a"], kind="generated", generator={"kind": "test"},
                            marking=Marking(watermark=True))
    with pytest.warns(Note, match="below the 256 px") as notes:
        writer.write_all([Sample(Image.new("RGB", (16, 16), (i, 0, 0)), "a", seed=i) for i in range(3)])
    assert len([n for n in notes if "watermark" in str(n.message)]) == 1
    image_set = writer.finalize()
    assert [r.extra["watermarked"] for r in image_set.records] == [False] * 3
    assert image_set.manifest["markers"]["watermark"]["images"] == 0
