"""Thumbnails with Pillow: pure functions, run off the reactor thread.

``crop`` gives exactly the box asked for (scaled, then the excess cut from the middle);
``scale`` fits the image inside the box keeping its aspect ratio. Neither ever upscales: an
image smaller than the box gives a thumbnail of (at most) its own size, as the spec requires.
Animated GIF, WebP and PNG images also get animated thumbnails (WebP, as the spec prefers),
served only when a client asks with ``animated=true``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from PIL import Image, ImageOps, ImageSequence

# The formats we decode (each is also a format clients may be served as a thumbnail); the
# smaller the set, the smaller the attack surface of decoders fed with untrusted bytes.
DECODERS = ("JPEG", "PNG", "GIF", "WEBP")
FORMAT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}

# Animated thumbnails cost a decode of every frame: only for reasonably small animations.
MAX_ANIMATED_FRAMES = 1000
ANIMATED_PIXEL_BUDGET_FACTOR = 4  # frames x pixels may be this many times max_image_pixels

JPEG_QUALITY = 80


class NotAnImage(Exception):
    """Not an image in a format we thumbnail."""


class ImageTooLarge(Exception):
    """More pixels than the configured maximum."""


class SizeSpec(Protocol):
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def method(self) -> str: ...


@dataclass(frozen=True)
class ImageInfo:
    format: str
    media_type: str
    width: int
    height: int
    frames: int

    @property
    def animated(self) -> bool:
        return self.frames > 1


@dataclass(frozen=True)
class GeneratedThumbnail:
    width: int
    height: int
    method: str
    animated: bool
    media_type: str
    data: bytes


def _open(path: str) -> Image.Image:
    try:
        return Image.open(path, formats=DECODERS)
    except Image.DecompressionBombError:
        raise ImageTooLarge() from None
    except (OSError, SyntaxError, ValueError):
        raise NotAnImage() from None


def probe(path: str) -> ImageInfo:
    """The format and size of an image, from its header only."""
    with _open(path) as im:
        return _info(im)


def _info(im: Image.Image) -> ImageInfo:
    fmt = im.format or ""
    if fmt not in FORMAT_TYPES:
        raise NotAnImage()
    width, height = im.size
    # EXIF orientation 5-8 swaps the sides of what the viewer sees.
    if fmt == "JPEG":
        try:
            if im.getexif().get(0x0112) in (5, 6, 7, 8):
                width, height = height, width
        except Exception:
            pass
    frames = int(getattr(im, "n_frames", 1) or 1)
    return ImageInfo(fmt, FORMAT_TYPES[fmt], width, height, frames)


def scale_size(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """Fit (width, height) inside the box keeping the aspect ratio, never upscaling."""
    factor = min(box_w / width, box_h / height, 1.0)
    return max(1, round(width * factor)), max(1, round(height * factor))


def crop_plan(width: int, height: int, box_w: int, box_h: int) -> tuple[tuple[int, int],
                                                                         tuple[int, int, int, int]]:
    """(size to resize to, region of the resized image to keep) for a crop to the box. An
    image smaller than the box is cut to the box's aspect ratio at its own scale instead."""
    factor = max(box_w / width, box_h / height)
    if factor > 1.0:
        # No upscaling: the largest region with the box's aspect ratio, unscaled.
        if width * box_h > height * box_w:
            out_h, out_w = height, max(1, round(height * box_w / box_h))
        else:
            out_w, out_h = width, max(1, round(width * box_h / box_w))
        left, top = (width - out_w) // 2, (height - out_h) // 2
        return (width, height), (left, top, left + out_w, top + out_h)
    scaled_w = max(box_w, math.ceil(width * factor))
    scaled_h = max(box_h, math.ceil(height * factor))
    left, top = (scaled_w - box_w) // 2, (scaled_h - box_h) // 2
    return (scaled_w, scaled_h), (left, top, left + box_w, top + box_h)


def output_size(width: int, height: int, spec: SizeSpec) -> tuple[int, int]:
    if spec.method == "crop":
        _, (left, top, right, bottom) = crop_plan(width, height, spec.width, spec.height)
        return right - left, bottom - top
    return scale_size(width, height, spec.width, spec.height)


def _resize(frame: Image.Image, spec: SizeSpec) -> Image.Image:
    if spec.method == "crop":
        size, box = crop_plan(frame.width, frame.height, spec.width, spec.height)
        if size != frame.size:
            frame = frame.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        return frame.crop(box)
    size = scale_size(frame.width, frame.height, spec.width, spec.height)
    if size == frame.size:
        return frame.copy()
    return frame.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _unique(specs: Iterable[SizeSpec], width: int, height: int) -> list[SizeSpec]:
    """Specs giving distinct thumbnails (small images give the same one for several)."""
    seen: set[tuple[int, int, str]] = set()
    out = []
    for spec in specs:
        key = (*output_size(width, height, spec), spec.method)
        if key not in seen:
            seen.add(key)
            out.append(spec)
    return out


def _encode_static(im: Image.Image, source_format: str) -> tuple[str, bytes]:
    buf = io.BytesIO()
    if source_format == "JPEG":
        im.convert("RGB").save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
        return "image/jpeg", buf.getvalue()
    mode = "RGBA" if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info else "RGB"
    im.convert(mode).save(buf, "PNG", optimize=True)
    return "image/png", buf.getvalue()


def generate(path: str, sizes: Sequence[SizeSpec], max_pixels: int) -> list[GeneratedThumbnail]:
    """Every thumbnail for an image: static ones for each size, and animated ones too when
    the image is a (reasonably small) animation."""
    with _open(path) as im:
        info = _info(im)
        if info.width * info.height > max_pixels:
            raise ImageTooLarge()
        out: list[GeneratedThumbnail] = []
        try:
            im.seek(0)
            first = ImageOps.exif_transpose(im) if info.format == "JPEG" else im.copy()
            if first.mode not in ("RGB", "RGBA", "L", "LA"):
                first = first.convert("RGBA")
            specs = _unique(sizes, first.width, first.height)
            for spec in specs:
                thumb = _resize(first, spec)
                media_type, data = _encode_static(thumb, info.format)
                out.append(GeneratedThumbnail(thumb.width, thumb.height, spec.method, False,
                                              media_type, data))
            budget = max_pixels * ANIMATED_PIXEL_BUDGET_FACTOR
            if (
                info.animated
                and info.frames <= MAX_ANIMATED_FRAMES
                and info.width * info.height * info.frames <= budget
            ):
                out.extend(_animated(im, specs))
        except (OSError, SyntaxError, ValueError, EOFError):
            raise NotAnImage() from None
        return out


def _animated(im: Image.Image, specs: Sequence[SizeSpec]) -> list[GeneratedThumbnail]:
    """One pass over the frames, resizing each to every size: memory holds only thumbnails."""
    frames: list[list[Image.Image]] = [[] for _ in specs]
    durations: list[int] = []
    for frame in ImageSequence.Iterator(im):
        rgba = frame.convert("RGBA")
        durations.append(int(frame.info.get("duration", im.info.get("duration", 100)) or 100))
        for i, spec in enumerate(specs):
            frames[i].append(_resize(rgba, spec))
    out = []
    for spec, resized in zip(specs, frames, strict=True):
        buf = io.BytesIO()
        resized[0].save(
            buf, "WEBP", save_all=True, append_images=resized[1:], duration=durations,
            loop=int(im.info.get("loop", 0) or 0), quality=75, method=4,
        )
        out.append(GeneratedThumbnail(resized[0].width, resized[0].height, spec.method, True,
                                      "image/webp", buf.getvalue()))
    return out


class Candidate(Protocol):
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def method(self) -> str: ...
    @property
    def animated(self) -> bool: ...
    @property
    def media_length(self) -> int: ...


C = TypeVar("C", bound=Candidate)


def select(
    thumbnails: Sequence[C], width: int, height: int, method: str, animated: bool
) -> C | None:
    """The stored thumbnail that best answers a request: of the method asked for, the
    smallest at least as large as the request (else the largest there is), preferring for
    crop the aspect ratio asked for. Animated ones only when asked, and when there are any."""
    pool = [t for t in thumbnails if t.animated]
    if not animated or not pool:
        pool = [t for t in thumbnails if not t.animated]
    for wanted in (method, "scale" if method == "crop" else "crop"):
        of_method = [t for t in pool if t.method == wanted]
        if not of_method:
            continue
        big_enough = [t for t in of_method if t.width >= width and t.height >= height]
        if wanted == "scale":
            # Scale keeps the image's aspect: one side reaching the box is enough.
            big_enough = [t for t in of_method if t.width >= width or t.height >= height]
        if big_enough:
            return min(
                big_enough,
                key=lambda t: (
                    abs(width * t.height - height * t.width) if wanted == "crop" else 0,
                    t.width * t.height,
                    t.media_length,
                ),
            )
        return max(of_method, key=lambda t: (t.width * t.height, -t.media_length))
    return None
