"""The model object users load: the engine core plus the media layer (video files, timelines, live sources).

`VLM` adds to `Engine` only what needs files and streams: video items given as a path are sampled by SmolVLM2's
rule, and `timeline` / `watch` run the media layer over this model. Everything else is the engine's public API.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from . import defaults
from .engine import bundle as bundle_mod
from .engine.core import Engine
from .engine.frame import Frame
from .errors import InputError
from .media.live import watch
from .media.sources import LiveSource
from .media.timeline import timeline
from .media.video import sample_clip
from .records import LiveCaption, Result, Segment

DEFAULT_VIDEO_PROMPT = defaults.VIDEO_PROMPT


class VLM(Engine):
    """A loaded SmolVLM2 model. Create it with `edgevlm.load`."""

    def _video_frames(self, item: dict[str, Any]) -> tuple[list[Frame], float]:
        """The frames of a video item: sampled from a file by the model's rule, or the caller's own Frames."""
        src = item.get("video", item.get("path"))
        if not isinstance(src, (str, os.PathLike)):
            return super()._video_frames(item)
        fps, max_frames = (
            float(item.get("fps", self.spec.video_fps)),
            int(item.get("max_frames", self.spec.video_max_frames)),
        )
        if fps <= 0 or max_frames < 1:
            raise InputError(
                f"sample at a positive fps and at least one frame; got fps={fps}, max_frames={max_frames}."
            )
        frames, info = sample_clip(src, fps, max_frames)
        return frames, info.duration

    def ask_video(
        self,
        video: str | os.PathLike | Sequence[Frame],
        question: str,
        *,
        max_new_tokens: int | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        **kw,
    ) -> Result:
        """One answer about a whole clip, through SmolVLM2's video prompt: frames sampled by the model's rule
        (`fps` per second up to `max_frames`, ends skipped on long clips), each introduced by its time.

        Args:
            video: a video file, or your own list of edgevlm.Frame.
            question: the text of the question.
            max_new_tokens: answer length limit (default 128).
            fps: frames sampled per second (default: the model's, 1).
            max_frames: at most this many frames (default: the model's, 64).
            **kw: generation options by name (do_sample, temperature, top_k, top_p, repetition_penalty, seed,
                stop_ids, ignore_eos, logits_processors; choices, json_schema, regex, grammar for a structured
                answer), or config=GenerationConfig(...); a keyword wins over the same field of config.

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            r = vlm.ask_video("clip.mp4", "What does the person pick up?", fps=1, max_frames=32)
            print(r.text, r.images)  # the answer and the number of frames it saw
        """
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty; pass some text.")
        item: dict[str, Any] = {"type": "video", "video": video}
        if fps is not None:
            item["fps"] = fps
        if max_frames is not None:
            item["max_frames"] = max_frames
        return self.chat(
            [{"role": "user", "content": [item, {"type": "text", "text": question}]}],
            max_new_tokens=max_new_tokens,
            **kw,
        )

    def caption_video(
        self,
        video: str | os.PathLike | Sequence[Frame],
        *,
        max_new_tokens: int | None = None,
        prompt: str = DEFAULT_VIDEO_PROMPT,
        **kw,
    ) -> Result:
        """One description of a whole clip: `ask_video` with SmolVLM2's own video prompt.

        Args:
            video: a video file, or your own list of edgevlm.Frame.
            max_new_tokens: answer length limit (default 128).
            prompt: the instruction (default edgevlm.defaults.VIDEO_PROMPT).
            **kw: fps=, max_frames= and generation options, as `ask_video`.

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            print(vlm.caption_video("clip.mp4").text)
        """
        return self.ask_video(video, prompt, max_new_tokens=max_new_tokens, **kw)

    def timeline(self, video: str | os.PathLike, **kw) -> Iterator[Segment]:
        """Timed captions of a video file, one per segment (static stretches merged, scene cuts kept).

        Args:
            video: a video file.
            **kw: every=, scene=, sample_fps=, threshold=, scene_threshold=, prompt=, max_new_tokens=, split=,
                on_progress=, budget_per_minute= and generation options: edgevlm.media.timeline.timeline says
                each.

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            for seg in vlm.timeline("clip.mp4", every=5.0):
                print(f"{seg.start:.1f}-{seg.end:.1f} s: {seg.text}")
        """
        return timeline(self, video, **kw)

    def watch(self, source: str | int | LiveSource | Sequence[str | int | LiveSource], **kw) -> Iterator[LiveCaption]:
        """Captions of a live source (or several, captioned together) as they happen.

        Args:
            source: a camera index, /dev/videoN, a stream URL (rtsp, http, udp, ...), a video file replayed in real
                time, an edgevlm.PushSource, or a list of them.
            **kw: prompt=, max_new_tokens=, threshold=, min_interval=, heartbeat=, split=, longest_edge=,
                reuse_tiles=, budget_s=, trigger=, evidence=, lookback=, after=, max_captions=, source_options=
                and generation options:
                edgevlm.media.live.watch says each.

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            for c in vlm.watch("clip.mp4", max_captions=2):  # or "rtsp://camera.local/stream", 0 ...
                print(c.timestamp, c.text, c.latency_ms)
        """
        return watch(self, source, **kw)


def load(
    model: str | os.PathLike = bundle_mod.DEFAULT_MODEL,
    *,
    variant: str | dict[str, str] | None = None,
    providers: Sequence[str] | str | None = None,
    threads: int | None = None,
    memory_arena: bool = True,
    vision_cache_size: int = 16,
    verify: bool | str = True,
    revision: str | None = None,
    progress: bool = True,
    max_image_pixels: int | None = None,
) -> VLM:
    """Load a SmolVLM2 ONNX model.

    Args:
        model: a bundle folder from `edgevlm export`, a folder in Hugging Face's official onnx/ layout, or a hub id
            (downloaded into the Hugging Face cache; default HuggingFaceTB/SmolVLM2-256M-Video-Instruct).
        variant: "fp32" (default: PyTorch's tokens exactly), "fp16", "int8", "q4", "mixed" (fastest on CPUs), or a
            per-part dict such as {"vision": "int8", "decoder": "q4"}.
        providers: None or "auto" for the best available (CUDA, ..., the CPU last), or names ("cuda", "cpu",
            "openvino", full EP names), as a comma string or a list.
        threads: intra-op threads, and threads per image resize (default: onnxruntime's choice, and every core for
            resizing).
        memory_arena: False trades some speed for a smaller resident footprint.
        vision_cache_size: how many encoded images are kept for repeats (keyed by pixel content).
        verify: check the bundle's sha256 sums before loading; a file that matched once is trusted while it is
            unchanged on disk (same inode, size, mtime and ctime), so only the first load hashes it; "full"
            hashes every file every time; False checks nothing.
        revision: the hub revision (branch, tag or commit) for a hub id.
        progress: show a download progress bar for a hub id.
        max_image_pixels: larger images are refused before they are decoded (default 100 MP, or
            $EDGEVLM_MAX_IMAGE_PIXELS).

    Example:
        import edgevlm

        vlm = edgevlm.load("./smolvlm2-256m-bundle", variant="mixed", threads=2)
        print(vlm, vlm.kernels)
        print(vlm.caption("photo.jpg").text)
    """
    root = bundle_mod.resolve(model, revision=revision, progress=progress, variant=variant)
    return VLM(
        bundle_mod.open_bundle(root),
        variant=variant,
        providers=providers,
        threads=threads,
        memory_arena=memory_arena,
        vision_cache_size=vision_cache_size,
        verify=verify,
        max_image_pixels=max_image_pixels,
    )


__all__ = ["VLM", "load"]
