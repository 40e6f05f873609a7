"""A 5x7 bitmap font for the characters the synthetic OCR family renders.

Drawing glyphs from bitmaps (instead of a system or Pillow font) keeps the images byte-identical across machines
and Pillow versions.
"""
from __future__ import annotations

import numpy as np

_GLYPHS: dict[str, tuple[str, ...]] = {
    "0": ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    "1": ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11110", "00001", "00001", "01110", "00001", "00001", "11110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "5": ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    "6": ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "8": ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    "9": ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
    "A": ("01110", "10001", "10001", "11111", "10001", "10001", "10001"),
    "E": ("11111", "10000", "10000", "11110", "10000", "10000", "11111"),
    "H": ("10001", "10001", "10001", "11111", "10001", "10001", "10001"),
    "K": ("10001", "10010", "10100", "11000", "10100", "10010", "10001"),
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "T": ("11111", "00100", "00100", "00100", "00100", "00100", "00100"),
    "X": ("10001", "10001", "01010", "00100", "01010", "10001", "10001"),
}

CHARACTERS: tuple[str, ...] = tuple(_GLYPHS)


def glyph_mask(char: str, scale: int = 2) -> np.ndarray:
    """Boolean mask (7*scale, 5*scale) of ``char``; raises KeyError naming the supported characters."""
    if char not in _GLYPHS:
        raise KeyError(f"no glyph for {char!r}; supported: {''.join(CHARACTERS)}")
    rows = np.array([[c == "1" for c in row] for row in _GLYPHS[char]], dtype=bool)
    return np.kron(rows, np.ones((scale, scale), dtype=bool))
