"""SmolVLM2's image rules in numpy + Pillow, matching transformers' SmolVLMImageProcessor pixel for pixel.

Pillow does the resizing because the reference resamples with PIL's LANCZOS filter: OpenCV's Lanczos kernel differs,
and matching pixel values exactly is what makes our answers equal the PyTorch model's.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageTooLargeError, InputError
from .bundle import ModelSpec
from .limits import max_image_pixels
from .resample import resize_lanczos, resize_lanczos_twice

MAX_IMAGE_SIZE = 4096  # transformers' cap on the resized longest edge

ImageLike = Union[str, os.PathLike, bytes, np.ndarray, Image.Image]  # noqa: UP007 (a runtime alias on 3.10)


@dataclass
class ProcessedImage:
    pixel_values: np.ndarray  # (tiles, 3, T, T) float32
    rows: int  # 0 when not split
    cols: int
    tiles: np.ndarray | None = None  # (tiles, T, T, 3) uint8: the bytes pixel_values were made from (TileReuse)


def load_image(image: ImageLike, color: str = "rgb", max_pixels: int | None = None) -> Image.Image:
    """Open any supported input as a PIL image in RGB or RGBA.

    `color` tells how to read a 3- or 4-channel numpy array: "rgb" (PIL, imageio) or "bgr" (OpenCV's cv2.imread and
    VideoCapture). Files are read like transformers' `load_image`: EXIF orientation applied, then RGB. An image of
    more than `max_pixels` (edgevlm.engine.limits) is refused from its header, before it is decoded.
    """
    limit = max_image_pixels(max_pixels)
    if isinstance(image, Image.Image):
        _check_dimensions(image.size, "image", limit)
        return _to_rgb_or_rgba(image)
    if isinstance(image, np.ndarray):
        return _from_array(image, color, limit)
    if isinstance(image, (bytes, bytearray)):
        return _open(io.BytesIO(image), "<bytes>", limit)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.exists():
            raise InputError(f"image file {path} does not exist; check the path.")
        if not path.is_file():
            raise InputError(f"{path} is not a regular file (a folder, device or pipe); pass an image file.")
        if path.stat().st_size == 0:
            raise InputError(f"image file {path} is empty (0 bytes); pass a PNG, JPEG, WebP, BMP or TIFF file.")
        return _open(path, str(path), limit)
    raise InputError(
        f"cannot read an image from a {type(image).__name__}; pass a path, bytes, a numpy array "
        f"(H, W[, C]) or a PIL image."
    )


def _open(src, name: str, limit: int) -> Image.Image:
    try:
        with warnings.catch_warnings():  # our own limit applies; Pillow's bomb warning would only add noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                _check_dimensions(im.size, name, limit)
                im = ImageOps.exif_transpose(im)
                im.load()
                return _to_rgb_or_rgba(im, keep_alpha=False)
    except InputError:
        raise
    except PermissionError:
        raise InputError(f"{name} cannot be read: permission denied.") from None
    except UnidentifiedImageError:
        raise InputError(f"{name} is not an image Pillow can read; pass a PNG, JPEG, WebP, BMP or TIFF file.") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{name} could not be decoded ({e}); the file looks corrupt or truncated.") from None
    except Image.DecompressionBombError:  # Pillow refuses some headers itself, before we see the size
        raise ImageTooLargeError(
            f"{name} is over the limit of {limit:,} pixels (its header claims a far larger image); downscale it first."
        ) from None


def _check_dimensions(size: tuple[int, int], name: str, limit: int) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise InputError(f"{name} has no pixels ({w}x{h}).")
    if w * h > limit:
        raise ImageTooLargeError(
            f"{name} is {w}x{h} pixels, over the limit of {limit:,} pixels; downscale it first, "
            f"or raise the limit (load(max_image_pixels=...), CLI --max-image-pixels, or "
            f"EDGEVLM_MAX_IMAGE_PIXELS)."
        )


def _to_rgb_or_rgba(im: Image.Image, keep_alpha: bool = True) -> Image.Image:
    """Gray, palette, 16-bit, CMYK ... -> RGB; images with transparency stay RGBA when `keep_alpha`."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.uint32)
        scale = 257 if arr.max() > 255 else 1  # 16-bit range -> 8-bit; an 8-bit range kept as is
        im = Image.fromarray((arr // scale).clip(0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        values = np.asarray(im, dtype=np.float32)
        values = values * 255.0 if values.max() <= 1.0 else values
        im = Image.fromarray(values.clip(0, 255).astype(np.uint8), "L")
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if keep_alpha and has_alpha:
        return im.convert("RGBA") if im.mode != "RGBA" else im
    return im.convert("RGB") if im.mode != "RGB" else im


def _from_array(a: np.ndarray, color: str, limit: int) -> Image.Image:
    if color not in ("rgb", "bgr"):
        raise InputError(f"color must be 'rgb' or 'bgr', not {color!r}.")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or a.size == 0:
        raise InputError(
            f"a numpy image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) with pixels; got shape {a.shape}."
        )
    _check_dimensions((a.shape[1], a.shape[0]), "numpy image", limit)
    if a.dtype == np.uint16:
        a = (a // 257).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = (
            (np.clip(a, 0.0, 1.0) * 255.0).round().astype(np.uint8)
            if a.max() <= 1.0
            else a.clip(0, 255).astype(np.uint8)
        )
    elif a.dtype != np.uint8:
        a = a.clip(0, 255).astype(np.uint8)
    if a.ndim == 3 and color == "bgr":
        a = a[:, :, [2, 1, 0, 3][: a.shape[2]]]
    mode = "L" if a.ndim == 2 else ("RGB" if a.shape[2] == 3 else "RGBA")
    return _to_rgb_or_rgba(Image.fromarray(np.ascontiguousarray(a), mode))


def _resize_longest(h: int, w: int, max_len: int) -> tuple[int, int]:
    """transformers' _resize_output_size_rescale_to_max_len then _scale_below_upper_bound."""
    aspect = w / h
    if w >= h:
        w = max_len
        h = int(w / aspect)
        h += h % 2
    else:
        h = max_len
        w = int(h * aspect)
        w += w % 2
    h, w = max(h, 1), max(w, 1)
    aspect = w / h
    if w >= h and w > MAX_IMAGE_SIZE:
        w, h = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif h > w and h > MAX_IMAGE_SIZE:
        h, w = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(h, 1), max(w, 1)


def _tile_multiple(h: int, w: int, tile: int) -> tuple[int, int]:
    """transformers' resize_for_vision_encoder: both sides up to multiples of the tile, aspect kept."""
    aspect = w / h
    if w >= h:
        w = math.ceil(w / tile) * tile
        h = math.ceil(int(w / aspect) / tile) * tile
    else:
        h = math.ceil(h / tile) * tile
        w = math.ceil(int(h * aspect) / tile) * tile
    return h, w


def _resize(im: Image.Image, h: int, w: int, threads: int | None = None) -> Image.Image:
    return resize_lanczos(im, w, h, threads)


def _processed(tiles: list[Image.Image], rows: int, cols: int, spec: ModelSpec) -> ProcessedImage:
    arr = np.stack([np.asarray(_flatten_alpha(t)) for t in tiles])  # (n, T, T, 3) uint8
    return ProcessedImage(_normalize_bytes(arr, spec), rows, cols, arr)


def _normalize_bytes(arr: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """(n, T, T, 3) uint8 tiles -> normalized float32 planes. A byte value maps to one float per channel, so the
    reference's rescale-then-normalize arithmetic is done 256 times per channel and looked up per pixel (same
    values)."""
    levels = (np.arange(256, dtype=np.float64) * spec.rescale_factor).astype(np.float32)
    mean = np.asarray(spec.image_mean, dtype=np.float32)
    std = np.asarray(spec.image_std, dtype=np.float32)
    table = (levels[None, :] - mean[:, None]) / std[:, None]  # (3, 256) float32
    out = np.empty((arr.shape[0], 3) + arr.shape[1:3], dtype=np.float32)
    for c in range(3):
        out[:, c] = table[c][arr[..., c]]
    return out


def _flatten_alpha(im: Image.Image) -> Image.Image:
    """Transparent pixels on white, after resizing (the reference's convert_to_rgb order)."""
    if im.mode == "RGB":
        return im
    background = Image.new("RGBA", im.size, (255, 255, 255))
    return Image.alpha_composite(background, im.convert("RGBA")).convert("RGB")


def check_longest_edge(longest_edge: Any) -> int | None:
    """A caller's resize target for split images (transformers' size={"longest_edge": N}): None or 1..4096 px."""
    if longest_edge is None:
        return None
    if (
        isinstance(longest_edge, bool)
        or not isinstance(longest_edge, (int, np.integer))
        or not (1 <= longest_edge <= MAX_IMAGE_SIZE)
    ):
        raise InputError(
            f"longest_edge must be a whole number of pixels from 1 to {MAX_IMAGE_SIZE}, got "
            f"{longest_edge!r}; e.g. 1024 for at most 2 x 2 tiles of 512 px (the model's default is "
            "4 tiles along the longer side)."
        )
    return int(longest_edge)


def tile_grid(
    width: int, height: int, spec: ModelSpec, split: bool | None = None, longest_edge: int | None = None
) -> tuple[int, int]:
    """(rows, cols) of the tile grid an image of this size gets ((0, 0): one tile), from its size alone, so the
    prompt length is known before anything is resized or encoded."""
    do_split = spec.do_image_splitting if split is None else split
    if not do_split:
        return 0, 0
    h, w = _tile_multiple(*_resize_longest(height, width, longest_edge or spec.longest_edge), spec.tile)
    if h <= spec.tile and w <= spec.tile:
        return 0, 0
    return math.ceil(h / spec.tile), math.ceil(w / spec.tile)


def process_image(
    image: ImageLike,
    spec: ModelSpec,
    split: bool | None = None,
    color: str = "rgb",
    longest_edge: int | None = None,
    max_pixels: int | None = None,
    threads: int | None = None,
) -> ProcessedImage:
    """One image -> tiles (+ the global image) as the vision encoder wants them.

    split=None follows the model's preprocessor config (on for SmolVLM2). `longest_edge` overrides the resize
    target before splitting (fewer tiles: 1024 gives at most 2 x 2 of 512 px, plus the global view). `threads`:
    how many threads each resize pass may use (None: every core), the model's `threads`, as in the C library.
    """
    im = load_image(image, color, max_pixels)
    tile = spec.tile
    h, w = _resize_longest(im.height, im.width, longest_edge or spec.longest_edge)
    do_split = spec.do_image_splitting if split is None else split
    if not do_split:  # the reference's two resizes, in one call (fused where one upscales and one downscales)
        return _processed([resize_lanczos_twice(im, (w, h), (tile, tile), threads)], 0, 0, spec)
    im = _resize(im, h, w, threads)
    h, w = _tile_multiple(h, w, tile)
    im = _resize(im, h, w, threads)
    if h <= tile and w <= tile:
        return _processed([im], 0, 0, spec)
    rows, cols = math.ceil(h / tile), math.ceil(w / tile)
    tiles = [im.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)) for r in range(rows) for c in range(cols)]
    tiles.append(_resize(im, tile, tile, threads))
    return _processed(tiles, rows, cols, spec)


def process_video_frame(frame: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """One RGB uint8 video frame -> (3, T, T): SmolVLMVideoProcessor's two bicubic resizes (longest edge to the
    video size with even rounding, then to the square tile; aspect not kept, as in the reference).

    The reference resizes uint8 tensors with torchvision's antialiased bicubic, which is ported from Pillow's
    filter; Pillow here differs on about 0.02 % of values, by one grey level (two on 2e-7 of them), and the
    generated tokens are equal (tests/test_video.py).
    """
    if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3):
        raise InputError("video frames must be RGB uint8 arrays of shape (H, W, 3).")
    h, w = _video_size(frame.shape[0], frame.shape[1], spec.video_longest_edge)
    im = Image.fromarray(frame)
    im = im.resize((w, h), resample=Image.Resampling.BICUBIC).resize(
        (spec.tile, spec.tile), resample=Image.Resampling.BICUBIC
    )
    return _processed([im], 0, 0, spec).pixel_values[0]


def _video_size(h: int, w: int, longest: int) -> tuple[int, int]:
    """transformers' video get_resize_output_image_size (no 4096 rescale step, unlike the image rule)."""
    longest = min(MAX_IMAGE_SIZE, longest)
    aspect = w / h
    if w >= h:
        w, h = longest, int(longest / aspect)
        h += h % 2
    else:
        h, w = longest, int(longest * aspect)
        w += w % 2
    return max(h, 1), max(w, 1)
