"""The one sample type every benchmark loader produces and the harness consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image

# How a family's answers are scored: "yesno" (accuracy and F1 on "yes"), "mc" (option letter), "short" (normalised
# exact match), "numeric" (number match with tolerance, else normalised exact match).
ANSWER_KINDS = ("yesno", "mc", "short", "numeric")


class BenchmarkDataError(ValueError):
    """A benchmark input the loaders cannot use. The message names the input (file, record, field) and the fix."""


class MissingImageError(BenchmarkDataError, FileNotFoundError):
    """An image a sample names is not on disk; the message names the sample, the path and `image_root`."""


@dataclass
class VQASample:
    id: str
    question: str  # the full text shown to the model after the image, prompt suffix included
    answer: str
    family: str  # the scoring group: a synthetic family or a real benchmark's category
    kind: str  # one of ANSWER_KINDS
    benchmark: str = "synthetic"
    options: dict[str, str] | None = None  # letter -> option text, for multiple choice
    image: Image.Image | Callable[[], Image.Image] | str | Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ANSWER_KINDS:
            raise ValueError(f"sample {self.id}: kind {self.kind!r} is not one of {ANSWER_KINDS}")

    def load_image(self) -> Image.Image | None:
        """The RGB image, loaded lazily from a path or a factory; None for a text-only sample."""
        from lostattn.tasks.images import to_rgb  # images.py builds on this module

        img = self.image
        if img is None:
            return None
        try:
            if callable(img):
                img = img()
            elif isinstance(img, (str, Path)):
                path = Path(img)
                if not path.is_file():
                    raise MissingImageError(f"image file {path} does not exist")
                try:
                    with Image.open(path) as f:
                        img = to_rgb(f)
                except Image.DecompressionBombError as e:
                    raise BenchmarkDataError(f"image file {path} is too large to decode safely ({e}); shrink it or "
                                             f"replace it with the benchmark's original") from None
        except BenchmarkDataError as e:  # the sample's id first: which sample of the run could not be read
            raise type(e)(f"sample {self.id}: {e}") from None
        return img if img.mode == "RGB" else to_rgb(img)
