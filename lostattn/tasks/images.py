"""Images of benchmark records, held undecoded until a sample's image is asked for.

A record's image field comes in one of the forms the public files use: a path (relative to the benchmark file's
folder, or to `image_root`), a base64 string (VLMEvalKit TSVs, optionally a `data:image/...;base64,` URI), raw
bytes, the `datasets` Image feature (`{"bytes": ..., "path": ...}`, or a cell of an Arrow column of that type), or a
decoded PIL image already in memory. `resolve_image` turns any of them into a zero-argument callable (or a PIL
image) that `VQASample.load_image` calls; nothing is decoded at load time.

What is checked when the records are read: that encoded bytes start with the signature of an image format (a few
bytes per record, so a wrong column or a text field mistaken for an image is refused before a model is loaded). A
full decode happens lazily; an image that is truncated further in fails then, with the same naming of file, record
and field.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lostattn.tasks.types import BenchmarkDataError, MissingImageError

# Leading bytes of the formats the public benchmark files use (PNG, JPEG, GIF, BMP, WebP, TIFF, JPEG 2000).
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
               b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")
_B64_PREFIX = re.compile(r"[A-Za-z0-9+/]{16}")
_B64_FULL = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_DATA_URI = re.compile(r"data:image/[\w.+-]+;base64,", re.I)
# A path is short; a longer value made of the base64 alphabet is meant as an encoded image.
_MAX_PATH = 1024


def looks_like_image(head: bytes) -> bool:
    """Whether `head` (the first bytes of a file) starts like an image in a format PIL reads."""
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def to_rgb(im: Image.Image) -> Image.Image:
    """`im` as 8-bit RGB with its real values: 16-bit and 32-bit integer greyscale (modes I;16*, I: PNG and TIFF
    16-bit images) scaled from 0-65535 to 0-255 and float greyscale (F) from 0-1 (or clipped to 0-255 when its values
    exceed 1), where PIL's own convert("RGB") clips every value above 255 to white."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.float64) / 257.0  # 65535 / 255: the 16-bit range onto the 8-bit one
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else a
    else:
        return im.convert("RGB")
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8), "L").convert("RGB")


def _too_large(where: str, e: Exception) -> BenchmarkDataError:
    return BenchmarkDataError(f"{where}: the image is too large to decode safely ({e}); shrink it (e.g. to at most "
                              f"{Image.MAX_IMAGE_PIXELS} pixels) or replace it with the benchmark's original")


class ImageRef:
    """A lazily decoded image; calling it returns the RGB PIL image or raises an error naming where it came from."""

    def __init__(self, where: str):
        self.where = where  # e.g. "/data/vmc.tsv: record 3 (index 17), field 'image'"

    def _decode(self, data: bytes) -> Image.Image:
        try:
            with Image.open(io.BytesIO(data)) as im:
                return to_rgb(im)
        except Image.DecompressionBombError as e:
            raise _too_large(self.where, e) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise BenchmarkDataError(f"{self.where}: the stored image cannot be decoded ({e}); the file is damaged "
                                     f"or truncated: re-export or re-download the benchmark") from None


class FileImage(ImageRef):
    """An image file on disk."""

    def __init__(self, path: Path, where: str, hint: str = ""):
        super().__init__(where)
        self.path, self.hint = Path(path), hint

    def fingerprint(self) -> str:
        return file_fingerprint(self.path)

    def __call__(self) -> Image.Image:
        if not self.path.is_file():
            raise MissingImageError(f"{self.where}: image file {self.path} does not exist{self.hint}")
        try:
            with Image.open(self.path) as im:
                return to_rgb(im)
        except Image.DecompressionBombError as e:
            raise _too_large(f"{self.where}: image file {self.path}", e) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise BenchmarkDataError(f"{self.where}: image file {self.path} cannot be decoded ({e}); replace it "
                                     f"with the original image") from None


class Base64Image(ImageRef):
    """A base64 string (VLMEvalKit's `image` column)."""

    def __init__(self, data: str, where: str):
        super().__init__(where)
        self.data = data

    def fingerprint(self) -> str:
        return "bytes:" + _sha(self.data.encode())

    def __call__(self) -> Image.Image:
        try:
            raw = base64.b64decode(self.data)
        except (binascii.Error, ValueError) as e:
            raise BenchmarkDataError(f"{self.where}: the value is not valid base64 ({e}); the field must hold a "
                                     f"base64-encoded image or an image path") from None
        return self._decode(raw)


class BytesImage(ImageRef):
    """Encoded image bytes held in memory."""

    def __init__(self, data: bytes, where: str):
        super().__init__(where)
        self.data = data

    def fingerprint(self) -> str:
        return "bytes:" + _sha(self.data)

    def __call__(self) -> Image.Image:
        return self._decode(self.data)


class ArrowCell:
    """A non-empty cell of an image column left in its Arrow table, with the first bytes of the image it holds."""

    __slots__ = ("column", "index", "head")

    def __init__(self, column, index: int, head: bytes):
        self.column, self.index, self.head = column, index, head


class ArrowImage(ImageRef):
    """One cell of an Arrow column of the `datasets` Image feature, read only when called (memory-mapped for a
    dataset saved with `save_to_disk`, so an unused image is never copied)."""

    def __init__(self, column, index: int, where: str):
        super().__init__(where)
        self.column, self.index = column, index

    def _bytes(self) -> bytes:
        value = self.column[self.index].as_py()
        return value.get("bytes") if isinstance(value, dict) else value

    def fingerprint(self) -> str:
        return "bytes:" + _sha(self._bytes() or b"")

    def __call__(self) -> Image.Image:
        return self._decode(self._bytes())


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


_WHOLE_BELOW = 64 << 20  # image files up to this size are hashed whole
_SAMPLE = 1 << 20


def file_fingerprint(path: str | Path) -> str:
    """What identifies an image file's content: its name and the SHA-256 of its bytes (all of them up to 64 MB;
    beyond, the first and last MB with the size and modification time, so an edit in the middle still shows), or
    'missing'. The folder it lies in is not part of it: moving a benchmark keeps its keys."""
    p = Path(path)
    if not p.is_file():
        return f"file:{p.name}:missing"
    st = p.stat()
    # Within one process, a file seen with the same size and change times is not read again (POPE's samples
    # share their COCO images); any write changes st_mtime_ns and st_ctime_ns.
    seen = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if seen not in _FINGERPRINTS:
        _FINGERPRINTS[seen] = _hash_image_file(p, st)
    return _FINGERPRINTS[seen]


_FINGERPRINTS: dict[tuple, str] = {}


def _hash_image_file(p: Path, st) -> str:
    h = hashlib.sha256()
    with p.open("rb") as fh:
        if st.st_size < _WHOLE_BELOW:
            h.update(fh.read())
        else:
            h.update(fh.read(_SAMPLE))
            fh.seek(st.st_size - _SAMPLE)
            h.update(fh.read(_SAMPLE))
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return f"file:{p.name}:{h.hexdigest()[:16]}"


def image_fingerprint(img) -> str:
    """What identifies a sample's image content, for the keys of records and cells: 'none' without an image; the
    bytes (or a file's `file_fingerprint`) of a stored image; the pixels of an image in memory; a generated
    image's own fingerprint (the synthetic benchmark: its definition, split and index)."""
    if img is None:
        return "none"
    if isinstance(img, (str, Path)):
        return file_fingerprint(img)
    if isinstance(img, Image.Image):
        return "pixels:" + _sha(f"{img.mode}{img.size}".encode() + img.tobytes())
    if hasattr(img, "fingerprint"):
        return img.fingerprint()
    raise TypeError(f"an image of type {type(img).__name__} has no fingerprint; give it a fingerprint() method, so "
                    f"that a change of its content is noticed")


def _not_an_image(where: str, what: str) -> BenchmarkDataError:
    return BenchmarkDataError(f"{where}: {what} is not an image (its first bytes match no image format); the field "
                              f"must hold a base64-encoded PNG/JPEG or an image path: check that the column "
                              f"holds the images and that the file was not altered")


def _from_base64(text: str, where: str) -> Base64Image:
    head = text.lstrip()[:24]
    try:
        first = base64.b64decode(head[: len(head) // 4 * 4])
    except (binascii.Error, ValueError):
        first = b""
    if not looks_like_image(first):
        raise _not_an_image(where, "the base64 value")
    return Base64Image(text, where)


def resolve_image(value, where: str, base_dir: Path, image_root: str | Path | None):
    """What a VQASample's `image` holds for one record's image field: None (no image), a PIL image, or an ImageRef.

    Relative paths resolve against `image_root` when given, else `base_dir` (the benchmark file's folder).
    """
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, ImageRef):
        return value
    if isinstance(value, ArrowCell):
        if not looks_like_image(value.head):
            raise _not_an_image(where, "the stored image")
        return ArrowImage(value.column, value.index, where)
    if isinstance(value, dict) and ("bytes" in value or "path" in value):  # the `datasets` Image feature
        data, path = value.get("bytes"), value.get("path")
        if data:
            return resolve_image(data, where, base_dir, image_root)
        return resolve_image(path, where, base_dir, image_root) if path else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if not looks_like_image(data[:16]):
            raise _not_an_image(where, "the stored bytes")
        return BytesImage(data, where)
    if isinstance(value, Path):
        return file_image(value, where, base_dir, image_root)
    if not isinstance(value, str):
        raise BenchmarkDataError(f"{where}: an image field holds a {type(value).__name__}; expected an image path, "
                                 f"a base64 string or the `datasets` Image feature")
    text = value.strip()
    if not text:
        return None
    uri = _DATA_URI.match(text)
    if uri:
        return _from_base64(text[uri.end():], where)
    if len(text) > _MAX_PATH:
        if not _B64_PREFIX.match(text):
            raise BenchmarkDataError(f"{where}: a {len(text)}-character value that is neither base64 nor an image "
                                     f"path; the field must hold a base64-encoded image or an image path")
        return _from_base64(text, where)
    # Base64 has no '.', and paths have an extension: a padded base64 run is an encoded image, whatever it holds.
    if len(text) >= 64 and len(text) % 4 == 0 and "." not in text and _B64_FULL.fullmatch(text):
        return _from_base64(text, where)
    return file_image(text, where, base_dir, image_root)


def file_image(path: str | Path, where: str, base_dir: Path, image_root: str | Path | None) -> FileImage:
    """A FileImage for `path`, resolved against `image_root` (when given) or `base_dir`."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (Path(image_root) if image_root else base_dir) / p
    if image_root:
        hint = f" (relative image paths are resolved against image_root={image_root})"
    else:
        hint = (f" (relative image paths are resolved against the benchmark's folder {base_dir}; pass image_root "
                f"(the folder holding the images) when they are elsewhere)")
    return FileImage(p, where, hint)
