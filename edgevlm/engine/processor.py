"""Messages and images -> prompt ids and pixel values, with no ONNX session (ORT-GenAI's "processor" stage).

Why a class of its own: the engine needs it, and so does everything that must build exactly the runtime's
inputs without holding a model in memory: the exporter computes PyTorch's reference outputs for a 2.2B
checkpoint before any ONNX part is loaded (docs/design.md, "Export within memory").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..errors import InputError
from . import bundle as bundle_mod
from . import prompt as prompt_mod
from .frame import Frame
from .limits import max_image_pixels as max_image_pixels_limit
from .preprocess import ImageLike, ProcessedImage, check_longest_edge, load_image, process_image, tile_grid
from .tile_reuse import TileReuse
from .tokenizer import Tokenizer

VideoFrames = Callable[[dict[str, Any]], "tuple[list[Frame], float]"]


@dataclass(frozen=True)
class PendingImage:
    """An image of a prompt, decoded and waiting for the vision encoder, with the options it was given."""

    image: Image.Image
    split: bool
    cache: bool  # the vision cache may serve and keep it
    longest_edge: int | None  # None: the model's own
    reuse: TileReuse | None = None  # the source's last frame, whose unchanged tiles' features are reused


@dataclass(frozen=True)
class PendingVideo:
    """A video of a prompt: its sampled frames, waiting for the vision encoder."""

    frames: list[Frame]


@dataclass
class Prompt:
    """Stage 1 (`VLM.prepare`): the prompt's token ids, where its images and videos sit, and their decoded pixels
    waiting to be encoded. Its length is exact before any encoding, so the context budget is checked first."""

    input_ids: list[int]
    slots: list[prompt_mod.ImageSlot | prompt_mod.VideoSlot]
    pending: list[PendingImage | PendingVideo]  # in prompt order
    decode_s: float = 0.0  # time spent decoding images and sampling video frames

    @property
    def images(self) -> int:
        return len(self.slots)


def frames_given(item: dict[str, Any]) -> tuple[list[Frame], float]:
    """The frames of a video item when the caller gave Frames (the engine core reads no video files)."""
    src = item.get("video", item.get("path"))
    if isinstance(src, Sequence) and not isinstance(src, str) and src and all(isinstance(f, Frame) for f in src):
        frames = list(src)
        return frames, float(item.get("duration", frames[-1].timestamp))
    raise InputError(
        "a video item needs 'video': a non-empty list of edgevlm.Frame (RGB uint8 image + "
        "timestamp in seconds), or a file path with edgevlm.load's model."
    )


class Processor:
    """The bundle's image rules, chat template and tokenizer. `Processor.open(bundle_dir)` loads no model."""

    def __init__(
        self, model_bundle: bundle_mod.Bundle, max_image_pixels: int | None = None, threads: int | None = None
    ):
        self.bundle = model_bundle
        self.spec = model_bundle.spec
        self.max_image_pixels = max_image_pixels_limit(max_image_pixels)
        self.threads = threads  # threads per resize pass (None: every core)
        self.tokenizer = Tokenizer(model_bundle.root / "tokenizer.json")

    @classmethod
    def open(cls, root: str | os.PathLike, max_image_pixels: int | None = None) -> Processor:
        return cls(bundle_mod.open_bundle(root), max_image_pixels)

    def preprocess(self, image: ImageLike, split: bool | None = None, color: str = "rgb") -> ProcessedImage:
        return process_image(
            image, self.spec, split=split, color=color, max_pixels=self.max_image_pixels, threads=self.threads
        )

    def prepare(
        self,
        messages: list[dict[str, Any]],
        split: bool | None = None,
        color: str = "rgb",
        video_frames: VideoFrames = frames_given,
    ) -> Prompt:
        """Check the messages, decode their images (and sample video frames through `video_frames`), build the
        prompt ids. The tile grid of an image follows from its size alone, so the ids are exact before anything
        is encoded."""
        messages = prompt_mod.normalize_messages(messages)
        t0 = time.perf_counter()
        slots: list[prompt_mod.ImageSlot | prompt_mod.VideoSlot] = []
        pending: list[PendingImage | PendingVideo] = []
        has_video = False
        for m in messages:
            for item in m["content"]:
                if item["type"] == "video":
                    has_video = True
                    frames, duration = video_frames(item)
                    slots.append(prompt_mod.VideoSlot([f.timestamp for f in frames], duration))
                    pending.append(PendingVideo(frames))
                elif item["type"] == "image":
                    src = item.get("image", item.get("path", item.get("url")))
                    if src is None:
                        raise InputError("an image item needs an 'image' (path, array or PIL image).")
                    im = load_image(src, item.get("color", color), self.max_image_pixels)
                    do_split = item.get("split", split)
                    do_split = self.spec.do_image_splitting if do_split is None else do_split
                    edge = check_longest_edge(item.get("longest_edge"))
                    slots.append(prompt_mod.ImageSlot(*tile_grid(im.width, im.height, self.spec, do_split, edge)))
                    reuse = item.get("reuse")
                    if reuse is not None and not isinstance(reuse, TileReuse):
                        raise InputError(
                            f"an image item's 'reuse' must be an edgevlm.TileReuse, not {type(reuse).__name__}."
                        )
                    pending.append(PendingImage(im, do_split, bool(item.get("cache", True)), edge, reuse))
        decode_s = time.perf_counter() - t0
        # transformers renders prompts with a video through its own default template (SmolVLMProcessor does so for
        # compatibility with the released checkpoints); images use the model's template.
        text = prompt_mod.render(
            messages, None if has_video else self.bundle.chat_template, special_tokens=self.bundle.special_tokens
        )
        # transformers' processor.apply_chat_template(tokenize=True) adds no special tokens when the rendered prompt
        # already starts with the tokenizer's BOS (SmolLM2's tokenizer would add a second one).
        bos = self.bundle.special_tokens.get("bos_token")
        add_special = not (bos and text.startswith(bos))
        text = prompt_mod.expand_images(text, slots, self.spec.image_seq_len)
        return Prompt(self.tokenizer.encode(text, add_special), slots, pending, decode_s)
