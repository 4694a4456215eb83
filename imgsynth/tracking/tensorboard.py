"""TensorBoard: event files under ``<run>/tensorboard/``, one folder per tracker run (``seed_0/replace``…,
``run`` for the run folder), so TensorBoard overlays the chains (``tensorboard --logdir <run>/tensorboard``).

Written with torch's ``SummaryWriter`` (it needs the ``tensorboard`` package: ``imgsynth[tensorboard]``).
TensorBoard has parameters only as text and no artifacts: the recipe is a text summary, report pictures are
images and the other report files text (their path; CSV and JSON with their content).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from imgsynth.tracking.registry import Tracker

if TYPE_CHECKING:
    import numpy as np

LOG_DIR = "tensorboard"
# Larger text files are named, not copied, into the event file.
MAX_TEXT_BYTES = 200_000


class TensorboardTracker(Tracker):
    name = "tensorboard"
    install = "imgsynth[tensorboard]"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        from torch.utils.tensorboard import SummaryWriter  # ImportError without the tensorboard package

        self._writer_class = SummaryWriter
        self._writer: Any = None

    def start(self, name: str, run_id: str | None, *, group: str, tags: Mapping[str, str],
              params: Mapping[str, str]) -> str:
        from imgsynth.safe_paths import make_dirs_inside

        new = run_id is None
        run_id = run_id or (f"seed_{tags['seed']}/{tags['mode']}" if "seed" in tags else "run")
        folder = Path(LOG_DIR, run_id)
        make_dirs_inside(self.settings.run_dir, folder)  # a file or link in the way is an error, not a write
        self._writer = self._writer_class(log_dir=str(self.settings.run_dir / folder))
        if new:
            text = "\n".join(f"    {key} = {value}" for key, value in {**tags, **params}.items())
            self._writer.add_text("params", text, 0)
        return run_id

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, global_step=step)

    def log_image(self, key: str, step: int, image: np.ndarray) -> None:
        self._writer.add_image(key, image, global_step=step, dataformats="HWC")

    def log_files(self, paths: Sequence[Path]) -> None:
        import numpy as np
        from PIL import Image

        for path in paths:
            if path.suffix == ".png":
                with Image.open(path) as picture:
                    self._writer.add_image(f"reports/{path.stem}", np.asarray(picture.convert("RGB")), 0,
                                           dataformats="HWC")
            elif path.suffix in (".csv", ".json") and path.stat().st_size <= MAX_TEXT_BYTES:
                body = "\n".join(f"    {line}" for line in path.read_text(encoding="utf-8").splitlines())
                self._writer.add_text(f"reports/{path.name}", f"{path}\n\n{body}", 0)
            else:
                self._writer.add_text(f"reports/{path.name}", str(path), 0)

    def finish(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
