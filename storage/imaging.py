"""The Pillow side of the media stage: verify, bound, clean and scale images.

Every stored image is re-encoded from decoded pixels, never copied: that is what guarantees
no metadata survives (EXIF with GPS, XMP, IPTC, comments, maker notes) and that a file which
only looks like an image (a polyglot) is not served back as one. Orientation is applied before
the EXIF goes, and colour profiles are converted to sRGB before they go.

Thumbnails decode as little as they can: `draft()` lets the JPEG decoder produce a 1/2, 1/4
or 1/8 scale image directly from the DCT coefficients, and `resize(reducing_gap=...)` box-
reduces by whole factors before the final Lanczos pass. Outputs are in-memory bytes, a few
hundred KB for thumbnails; the plaintext never touches the disk.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, ImageCms, ImageOps, ImageSequence, UnidentifiedImageError

from storage.sniff import GIF, JPEG, PILLOW_FORMATS, PNG, WEBP, FileType

logger = logging.getLogger(__name__)

THUMB = "thumb"
THUMB_PX = 160  # square crop, for lists and chat bubbles
SCALED = {"medium": 480, "large": 1080}  # long side; only made when smaller than the source
# JPEG for opaque thumbnails (its encoder is ~10x faster than WebP's at this size), WebP where
# there is transparency to keep.
THUMB_QUALITY = 82
ORIGINAL_QUALITY = 90
MAX_FRAMES = 1000
RESIZE = Image.Resampling.LANCZOS
REDUCING_GAP = 2.0


class ImageRejected(Exception):
    """The image cannot be accepted; `reason` is safe to show to the uploader."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Rendition:
    variant: str
    data: bytes
    content_type: str
    width: int
    height: int


def variants_for(width: int, height: int) -> list[str]:
    """The thumbnail variants an image of this (oriented) size gets."""
    long_side = max(width, height)
    return [THUMB, *(name for name, px in SCALED.items() if long_side > px)]


def open_image(fp: BinaryIO, ftype: FileType, max_pixels: int) -> Image.Image:
    """Open (header only) and refuse decompression bombs before any pixel is decoded."""
    fp.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our cap rules
            im = Image.open(fp, formats=[PILLOW_FORMATS[ftype]])
    except Image.DecompressionBombError as exc:
        raise ImageRejected("the image has too many pixels") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageRejected("the file is not a valid image") from exc
    pixels = im.width * im.height
    if pixels > max_pixels:
        im.close()
        raise ImageRejected(f"the image has {pixels} pixels; the limit is {max_pixels}")
    return im


def _decode(im: Image.Image) -> None:
    try:
        im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageRejected("the image data is corrupt or truncated") from exc


def _to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """Pixels converted from their embedded profile to sRGB (so dropping the profile keeps the
    colours); images without one, or with one lcms cannot use, are taken as sRGB."""
    if not icc or im.mode not in ("RGB", "RGBA"):
        return im
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        out = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode=im.mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return im
    return out if out is not None else im


def _clean(im: Image.Image, *, keep_gray: bool) -> Image.Image:
    """Oriented, sRGB, in a mode every encoder takes, with no metadata left in `info`."""
    icc = im.info.get("icc_profile")
    ImageOps.exif_transpose(im, in_place=True)  # our own decoded copy: no need for another
    if im.mode == "CMYK" or (im.mode in ("I;16", "I", "F")):
        im = im.convert("RGB") if im.mode == "CMYK" else ImageOps.autocontrast(im.convert("L"))
    elif im.mode == "L" and keep_gray:
        pass
    elif im.mode not in ("RGB", "RGBA"):
        im = im.convert("RGBA" if im.has_transparency_data else "RGB")
    im = _to_srgb(im, icc)
    im.info = {}
    return im


def _encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **params)
    return out.getvalue()


def sanitized_original(fp: BinaryIO, ftype: FileType, max_pixels: int) -> Rendition:
    """The image as it will be served: decoded, oriented, re-encoded without any metadata."""
    with open_image(fp, ftype, max_pixels) as im:
        if getattr(im, "is_animated", False):
            return _animated(im, ftype, max_pixels)
        _decode(im)
        clean = _clean(im, keep_gray=True)
    if ftype is JPEG:
        if clean.mode not in ("RGB", "L"):
            clean = clean.convert("RGB")
        data = _encode(clean, "JPEG", quality=ORIGINAL_QUALITY)
    elif ftype is PNG:
        data = _encode(clean, "PNG", compress_level=6)
    elif ftype is WEBP:
        data = _encode(clean, "WEBP", quality=ORIGINAL_QUALITY)
    else:  # a still GIF
        data = _encode(clean, "GIF", comment=b"")
    return Rendition("original", data, ftype.mime, clean.width, clean.height)


def _animated(im: Image.Image, ftype: FileType, max_pixels: int) -> Rendition:
    """Re-encode every frame (bounded: frame count and total pixels) with timing and loop."""
    frames: list[Image.Image] = []
    durations: list[int] = []
    total = 0
    try:
        for frame in ImageSequence.Iterator(im):
            total += frame.width * frame.height
            if len(frames) >= MAX_FRAMES or total > max_pixels:
                raise ImageRejected(
                    f"the animation is too large (more than {MAX_FRAMES} frames or "
                    f"{max_pixels} pixels in all)"
                )
            durations.append(int(frame.info.get("duration") or 100))
            clean = frame.convert("RGBA")
            clean.info = {}
            frames.append(clean)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageRejected("the animation data is corrupt or truncated") from exc
    loop = int(im.info.get("loop", 0))
    fmt = PILLOW_FORMATS[ftype]
    extra: dict[str, object] = (
        {"comment": b"", "disposal": 2, "optimize": False}
        if ftype is GIF
        else {"quality": ORIGINAL_QUALITY}
    )
    data = _encode(
        frames[0], fmt, save_all=True, append_images=frames[1:], duration=durations, loop=loop,
        **extra,
    )  # fmt: skip
    return Rendition("original", data, ftype.mime, frames[0].width, frames[0].height)


def _fit_long(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    w, h = size
    scale = long_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _draft_box(size: tuple[int, int], wanted: Collection[str]) -> tuple[int, int]:
    """The smallest decode size that still covers every wanted variant (in stored pixels:
    draft happens before orientation, and a 90° turn swaps nothing that matters here because
    the box keeps the image's own aspect ratio)."""
    w, h = size
    scale = 0.0
    for name in wanted:
        scale = max(scale, THUMB_PX / min(w, h) if name == THUMB else SCALED[name] / max(w, h))
    scale = min(1.0, scale)
    return max(1, int(w * scale)), max(1, int(h * scale))


def thumbnails(
    fp: BinaryIO, ftype: FileType, max_pixels: int, wanted: Collection[str] | None = None
) -> list[Rendition]:
    """The wanted thumbnail variants (default: all this image gets), from the first frame."""
    with open_image(fp, ftype, max_pixels) as im:
        names = variants_for(*_oriented_size(im))
        wanted = [n for n in names if wanted is None or n in wanted]
        if not wanted:
            return []
        im.draft("RGB", _draft_box(im.size, wanted))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
        _decode(im)
        base = _clean(im, keep_gray=False)
    out: list[Rendition] = []
    src = base
    for name in sorted((n for n in wanted if n != THUMB), key=lambda n: -SCALED[n]):
        src = src.resize(_fit_long(src.size, SCALED[name]), RESIZE, reducing_gap=REDUCING_GAP)
        out.append(_thumb(name, src))
    if THUMB in wanted:
        side = min(src.size)
        left, top = (src.width - side) // 2, (src.height - side) // 2
        square = src.crop((left, top, left + side, top + side))
        out.append(_thumb(THUMB, square.resize((THUMB_PX,) * 2, RESIZE, reducing_gap=REDUCING_GAP)))
    return out


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    orientation = im.getexif().get(0x0112, 1)
    return (im.height, im.width) if orientation in (5, 6, 7, 8) else (im.width, im.height)


def _thumb(name: str, im: Image.Image) -> Rendition:
    if im.mode == "RGBA":
        data, mime = _encode(im, "WEBP", quality=THUMB_QUALITY, method=4), "image/webp"
    else:
        data, mime = _encode(im, "JPEG", quality=THUMB_QUALITY), "image/jpeg"
    return Rendition(name, data, mime, im.width, im.height)
