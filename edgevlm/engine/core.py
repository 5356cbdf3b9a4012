"""The engine core: a loaded model that answers about images, text and already-decoded video frames, in stages
(prepare -> encode -> Generator) or in one call (chat / ask / caption / stream).

It knows no files but images and no video containers, cameras or streams: those are the media layer above it
(edgevlm.media), which feeds it Frames through this public API, and edgevlm.vlm.VLM puts the two together.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .. import defaults
from ..defaults import task_default
from ..errors import IncompleteAnswerError, InputError
from ..records import Result
from . import bundle as bundle_mod
from . import kernels
from .batch import BatchGenerator
from .frame import Frame
from .generate import Decoder, GenerationConfig, Generator, Timings, check_context
from .preprocess import ImageLike, ProcessedImage, process_image, process_video_frame
from .processor import PendingImage, PendingVideo, Processor, Prompt, frames_given
from .providers import choose, create_session, session_options, vision_run_options
from .structured import Grammars
from .tile_reuse import TileReuse

if TYPE_CHECKING:
    import onnxruntime as ort

DEFAULT_CAPTION_PROMPT = defaults.CAPTION_PROMPT

# Sessions on edgevlm's kernel library open one at a time, in this process: ONNX Runtime adds a custom operator
# domain to its process-wide schema registry with a check-then-add that two sessions opening at once can both pass
# ("the domain is already exist"; seen with the vision and decoder kernel graphs opening together).
_CUSTOM_OPS_OPEN = threading.Lock()


@dataclass
class EncodedImages:
    """Stage 2 (`VLM.encode`): the vision features of a Prompt's images, in prompt order; reusable with any
    number of Generators on the same prompt."""

    features: np.ndarray | None  # (tiles, image_seq_len, hidden), or None for a text-only prompt
    tiles: int = 0
    cached: int = 0  # images served by the vision cache
    vision_s: float = 0.0
    reused: int = 0  # tiles whose features a TileReuse served (unchanged since the source's last frame)


@dataclass
class EncodedImage:
    features: np.ndarray  # (tiles, image_seq_len, hidden)
    rows: int
    cols: int


class VisionCache:
    """Encoded images keyed by a hash of the decoded source pixels (and the tiling choice), so a repeated image
    skips resizing as well as the encoder; least recently used entries go first."""

    def __init__(self, max_entries: int = 16):
        self.max_entries = max_entries
        self._items: OrderedDict[str, EncodedImage] = OrderedDict()
        self._lock = threading.Lock()  # one model serves several threads (encode in one, generate in another)

    @staticmethod
    def key(image: Image.Image, split: bool, longest_edge: int | None = None) -> str:
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
        return f"{digest}:{image.mode}:{image.size}:{split}:{longest_edge}"

    def get(self, key: str) -> EncodedImage | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: EncodedImage) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class Engine:
    """A loaded SmolVLM2 model: images, text and video frames in, answers out. Create it with `edgevlm.load`
    (which gives the video-aware subclass, edgevlm.VLM).

    Thread safety: one Engine may serve several threads at once (ONNX Runtime sessions run concurrently, the
    vision cache is locked); each Generator belongs to the thread that drives it."""

    def __init__(
        self,
        model_bundle: bundle_mod.Bundle,
        *,
        variant: str | dict[str, str] | None = None,
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        memory_arena: bool = True,
        vision_cache_size: int = 16,
        verify: bool | str = True,
        max_image_pixels: int | None = None,
    ):
        self.bundle = model_bundle
        self.spec = model_bundle.spec
        files = model_bundle.part_files(variant)
        self.requested_providers = choose(providers)
        # part -> the kernel graph opened instead of its standard file (engine/kernels.py); empty: ONNX Runtime's
        # (a listed kernel graph that is absent, from an older download, say, only means ONNX Runtime's kernels)
        fp32_files = model_bundle.files.get("fp32", {})
        self._kernel_files = {
            part: model_bundle.kernel_graphs[path]
            for part, path in files.items()
            if path in model_bundle.kernel_graphs
            and model_bundle.kernel_graphs[path].is_file()
            and self._own_kernels_apply(part, fp32=fp32_files.get(part) == path)
        }
        if verify:  # before any file is read: an altered tokenizer.json is a checksum error, not a parse error
            # Every kernel graph of the variant present, opened here or not: as the C library checks them, so the
            # stamps either runtime writes are the ones the other trusts (engine/verified.py).
            listed = [model_bundle.kernel_graphs[p] for p in files.values() if p in model_bundle.kernel_graphs]
            present = [g for g in listed if g.is_file()]
            bundle_mod.verify_files(model_bundle, [*files.values(), *present], full=verify == "full")
        # `threads` also bounds each image resize (as in the C library): `--jobs N` archive workers, each loaded
        # with threads=cores/N, then share the cores instead of each resizing on all of them.
        self.processor = Processor(model_bundle, max_image_pixels, threads)
        self.max_image_pixels = self.processor.max_image_pixels
        self.variant = variant or model_bundle.default_variant
        self.files = files
        self.sessions = {}
        self.providers: dict[str, list[str]] = {}
        self.kernels: dict[str, str] = {}  # part -> what of edgevlm's own kernels it runs (engine/kernels.py)
        graphs = {part: self._kernel_files.get(part, path) for part, path in files.items()}
        # The parts open at once: ONNX Runtime optimizes and packs each part on the calling thread without the
        # GIL, so a load takes about as long as its decoder alone (docs/benchmarks.md, "load()").
        with ThreadPoolExecutor(len(graphs), thread_name_prefix="edgevlm-open") as pool:
            opened = {
                part: pool.submit(self._open_part, part, path, threads, memory_arena) for part, path in graphs.items()
            }
            for part, future in opened.items():
                self.sessions[part], self.providers[part] = future.result()
                bundle_mod.check_part_inputs(part, graphs[part], [i.name for i in self.sessions[part].get_inputs()])
                if part in self._kernel_files:
                    self.kernels[part] = kernels.label(part, fp32=fp32_files.get(part) == files[part])
        self.tokenizer = self.processor.tokenizer
        self.decoder = Decoder(
            self.sessions["embed_tokens"],
            self.sessions["decoder_model_merged"],
            self.spec.num_layers,
            self.spec.kv_heads,
            self.spec.head_dim,
            self.spec.max_positions,
        )
        vis_inputs = {i.name: i for i in self.sessions["vision_encoder"].get_inputs()}
        self._pixel_dtype = np.float16 if "float16" in vis_inputs["pixel_values"].type else np.float32
        self._vision_run_options = vision_run_options(self.providers["vision_encoder"], memory_arena)
        self.vision_cache = VisionCache(vision_cache_size)
        self.grammars = Grammars(self.tokenizer, self.spec.vocab_size, self.spec.eos_ids)

    def _open_part(
        self, part: str, path: Path, threads: int | None, memory_arena: bool
    ) -> tuple[ort.InferenceSession, list[str]]:
        opts = session_options(threads, memory_arena, spin=part == "decoder_model_merged")
        if part not in self._kernel_files:
            return create_session(path, self.requested_providers, opts)
        opts.register_custom_ops_library(str(kernels.library()))
        with _CUSTOM_OPS_OPEN:
            return create_session(path, self.requested_providers, opts)

    def _own_kernels_apply(self, part: str, fp32: bool) -> bool:
        """Whether `part` (its fp32 file or a quantized one) opens its kernel graph: a CPU session, and a CPU where
        the kernels of that graph beat ONNX Runtime's."""
        return self.requested_providers[0] == "CPUExecutionProvider" and kernels.in_use(part, fp32=fp32)

    # ----------------------------------------------------------------------------------------------- info
    @property
    def fell_back_to_cpu(self) -> bool:
        """True when a GPU provider was asked for but onnxruntime runs some part on the CPU only."""
        wanted_gpu = self.requested_providers[0] != "CPUExecutionProvider"
        return wanted_gpu and any(p[0] == "CPUExecutionProvider" for p in self.providers.values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.bundle.root}, variant={self.variant!r}, providers={self.providers['decoder_model_merged']})"

    # ------------------------------------------------------------------------------------------- vision
    def preprocess(self, image: ImageLike, *, split: bool | None = None, color: str = "rgb") -> ProcessedImage:
        """The vision encoder's input for one image, as the C API's evlm_image_preprocess: for comparing with
        another implementation, or for running the encoder yourself.

        Args:
            image: a path, bytes, PIL image or numpy array.
            split: tile the image (None: the model's rule); False: one tile.
            color: "rgb", or "bgr" for numpy arrays from OpenCV.

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            p = vlm.preprocess("photo.jpg", split=True)
            print(p.pixel_values.shape, p.rows, p.cols)  # (tiles, 3, tile, tile) and the grid
        """
        return self.processor.preprocess(image, split, color)

    def _encode_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        """Run the vision encoder on (tiles, 3, T, T) pixel values -> (tiles, image_seq_len, hidden).

        One run per tile: the int8 encoders quantize activations with one scale per run, so tiles sharing a run
        would change each other's features; alone, a tile's features depend on its pixels only, which is what
        lets a frame reuse the features of its unchanged tiles (TileReuse). A tile is 1,024 tokens, enough work
        per run that this is no slower than one run for all (docs/benchmarks-history.md, "One run per tile")."""
        pixels = pixel_values.astype(self._pixel_dtype, copy=False)
        mask = np.ones((1, 1, pixels.shape[2], pixels.shape[3]), dtype=bool)
        session = self.sessions["vision_encoder"]
        feats = [
            session.run(
                None, {"pixel_values": tile[None, None], "pixel_attention_mask": mask}, self._vision_run_options
            )[0]
            for tile in pixels
        ]
        return np.concatenate(feats).astype(np.float32, copy=False)

    def _encode_image(self, item: PendingImage) -> tuple[EncodedImage, bool, int]:
        """Features for one image, from the cache when the same pixels were seen with the same tiling choice;
        returns them, whether the cache served them, and how many tiles a TileReuse served. cache=False (live
        frames, each new) skips hashing the pixels and leaves the cache as it was; an item with a TileReuse
        (frames of one source) bypasses the cache and encodes only the tiles that changed."""
        key = (
            self.vision_cache.key(item.image, item.split, item.longest_edge)
            if item.cache and item.reuse is None
            else None
        )
        hit = self.vision_cache.get(key) if key else None
        if hit is not None:
            return hit, True, 0
        processed = process_image(
            item.image, self.spec, split=item.split, longest_edge=item.longest_edge, threads=self.processor.threads
        )
        encoded, reused = self._encode_processed(processed, item.reuse)
        if key:
            self.vision_cache.put(key, encoded)
        return encoded, False, reused

    def _encode_processed(self, processed: ProcessedImage, reuse: TileReuse | None) -> tuple[EncodedImage, int]:
        if reuse is None:
            return EncodedImage(self._encode_pixels(processed.pixel_values), processed.rows, processed.cols), 0
        feats, reused = reuse.encode(processed, self._encode_pixels)
        return EncodedImage(feats, processed.rows, processed.cols), reused

    def _encode_video_frame(self, frame: np.ndarray) -> tuple[np.ndarray, bool]:
        """Features (1, image_seq_len, hidden) of one RGB video frame, resized by the video rule; cached."""
        key = (
            "video:" + hashlib.blake2b(np.ascontiguousarray(frame).data, digest_size=16).hexdigest() + str(frame.shape)
        )
        hit = self.vision_cache.get(key)
        if hit is not None:
            return hit.features, True
        feats = self._encode_pixels(process_video_frame(frame, self.spec)[None])
        self.vision_cache.put(key, EncodedImage(feats, 0, 0))
        return feats, False

    def _video_frames(self, item: dict[str, Any]) -> tuple[list[Frame], float]:
        """The frames of a video item: the caller's own Frames (a subclass may also read files)."""
        return frames_given(item)

    # -------------------------------------------------------------------------------- staged engine API
    def prepare(self, messages: list[dict[str, Any]], *, split: bool | None = None, color: str = "rgb") -> Prompt:
        """Stage 1: check the messages, decode their images (and sample video frames), build the prompt ids.

        The tile grid of an image follows from its size alone, so the ids are exact before anything is encoded.

        Args:
            messages: as `chat`.
            split: tile images (None: the model's rule); False: one tile each.
            color: "rgb", or "bgr" for numpy arrays from OpenCV.

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            prompt = vlm.prepare(vlm.user_message("photo.jpg", "What is this?"), split=False)
            encoded = vlm.encode(prompt)
            gen = vlm.generator(prompt, encoded, max_new_tokens=16)
            print(vlm.tokenizer.decode(list(gen)), gen.finish_reason)
        """
        return self.processor.prepare(messages, split, color, self._video_frames)

    def encode(self, prompt: Prompt) -> EncodedImages:
        """Stage 2: the vision encoder over the prompt's images (the cache serves repeats). Thread-safe; the
        result serves any number of generators of the same prompt.

        Args:
            prompt: from `prepare`.

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            prompt = vlm.prepare(vlm.user_message("photo.jpg", "What is this?"), split=False)
            encoded = vlm.encode(prompt)
            gen = vlm.generator(prompt, encoded, max_new_tokens=16)
            print(vlm.tokenizer.decode(list(gen)), gen.finish_reason)
        """
        t0 = time.perf_counter()
        feats, tiles, cached, reused = [], 0, 0, 0
        for item in prompt.pending:
            if isinstance(item, PendingVideo):
                for f in item.frames:
                    encoded_frame, hit = self._encode_video_frame(f.image)
                    feats.append(encoded_frame)
                    cached += hit
                tiles += len(item.frames)
            else:
                encoded, hit, reused_tiles = self._encode_image(item)
                feats.append(encoded.features)
                tiles += encoded.features.shape[0]
                cached += hit
                reused += reused_tiles
        features = np.concatenate(feats) if feats else None
        return EncodedImages(features, tiles, cached, time.perf_counter() - t0, reused)

    def _encode_batch(self, prompts: Sequence[Prompt]) -> list[EncodedImages]:
        """Stage 2 for several prompts of images, their images resized side by side (the cache serves repeats as
        in `encode`). Prompts with video go through `encode` one by one."""
        images = [[item for item in p.pending if isinstance(item, PendingImage)] for p in prompts]
        if any(len(kept) < len(p.pending) for kept, p in zip(images, prompts)):
            return [self.encode(p) for p in prompts]
        t0 = time.perf_counter()
        found: list[list[EncodedImage | None]] = []  # per prompt, per image: a cache hit or None
        reused = [0] * len(prompts)  # tiles a TileReuse served, per prompt
        todo: list[tuple[int, int, str | None, PendingImage]] = []  # (prompt, image, cache key, image)
        for i, prompt_images in enumerate(images):
            found.append([])
            for j, item in enumerate(prompt_images):
                key = (
                    self.vision_cache.key(item.image, item.split, item.longest_edge)
                    if item.cache and item.reuse is None
                    else None
                )
                hit = self.vision_cache.get(key) if key else None
                found[i].append(hit)
                if hit is None:
                    todo.append((i, j, key, item))
        if todo:
            # Resizing is most of the preprocessing and Pillow releases the GIL while it resizes: the frames are
            # resized side by side (the vision encoder's threads are idle until then).
            with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1)) as pool:
                done = list(
                    pool.map(
                        lambda t: process_image(
                            t[3].image,
                            self.spec,
                            split=t[3].split,
                            longest_edge=t[3].longest_edge,
                            threads=self.processor.threads,
                        ),
                        todo,
                    )
                )
            # One encoder run per tile (_encode_pixels), never several images in one: the int8 encoder quantizes
            # its activations with one scale per run (3 of 4 captions differed when images shared a run).
            for (i, j, key, item), processed in zip(todo, done):
                encoded, served = self._encode_processed(processed, item.reuse)
                reused[i] += served
                found[i][j] = encoded
                if key:
                    self.vision_cache.put(key, encoded)
        vision_s = (time.perf_counter() - t0) / max(len(prompts), 1)  # each prompt's share of the vision time
        out = []
        for i in range(len(prompts)):
            feats_i = [e.features for e in found[i] if e is not None]  # every one is filled by now
            cached = len(found[i]) - sum(1 for t in todo if t[0] == i)
            out.append(
                EncodedImages(
                    np.concatenate(feats_i) if feats_i else None,
                    sum(f.shape[0] for f in feats_i),
                    cached,
                    vision_s,
                    reused[i],
                )
            )
        return out

    def generator(
        self, prompt: Prompt, encoded: EncodedImages, *, config: GenerationConfig | None = None, **kw: Any
    ) -> Generator:
        """Stage 3: a Generator for one answer (`prefill()`, `step()`, `cancel()` from any thread, or iterate
        for tokens).

        Args:
            prompt: from `prepare`.
            encoded: from `encode` of the same prompt.
            config: a GenerationConfig; max_new_tokens defaults to 128.
            **kw: generation options by name (max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty, seed,
                stop_ids, ignore_eos, logits_processors; choices, json_schema, regex, grammar for a structured
                answer), or config=GenerationConfig(...); a keyword wins over the same field of config.

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            prompt = vlm.prepare(vlm.user_message("photo.jpg", "What is this?"), split=False)
            encoded = vlm.encode(prompt)
            gen = vlm.generator(prompt, encoded, max_new_tokens=16)
            print(vlm.tokenizer.decode(list(gen)), gen.finish_reason)
        """
        config = GenerationConfig.from_kwargs(config=config, **kw)
        constraint = self.grammars.start(config.constraint) if config.constraint is not None else None
        return Generator(
            self.decoder,
            prompt.input_ids,
            encoded.features,
            self.spec.image_token_id,
            config,
            self.spec.eos_ids,
            constraint,
        )

    def logits(self, input_ids: Sequence[int], encoded: EncodedImages | None = None) -> np.ndarray:
        """Teacher-forced logits (positions, vocab) over `input_ids`, the images' features placed at their image
        tokens: what verification and accuracy measurements compare with PyTorch.

        Args:
            input_ids: token ids, a prompt's (`prompt.input_ids`) and any continuation.
            encoded: the prompt's images from `encode` (None for text only).

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            prompt = vlm.prepare(vlm.user_message("photo.jpg", "What is this?"), split=False)
            logits = vlm.logits(prompt.input_ids, vlm.encode(prompt))
            print(logits.shape, logits[-1].argmax())  # (positions, vocab); the greedy next token
        """
        embeds = self.decoder.merge(
            np.asarray(input_ids, dtype=np.int64),
            None if encoded is None else encoded.features,
            self.spec.image_token_id,
        )
        return self.decoder.forward(embeds)

    @staticmethod
    def user_message(
        images: ImageLike | Sequence[ImageLike] | None,
        text: str,
        *,
        cache: bool = True,
        longest_edge: int | None = None,
        reuse: TileReuse | None = None,
    ) -> list[dict[str, Any]]:
        """One user turn: the images, then the text (the shape `ask` sends), for `prepare`, `start` or `chat`.

        Args:
            images: an image, a list of them, or None.
            text: the question.
            cache: False marks the images as seen once (live frames): they bypass the vision cache.
            longest_edge: how large split images are resized before they are cut into tiles (as `ask`).
            reuse: a TileReuse for frames of one source (as `ask`).

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            print(vlm.chat(vlm.user_message(["a.jpg", "b.jpg"], "What changed?")).text)
        """
        if images is None:
            images = []
        elif isinstance(images, (str, os.PathLike, bytes, np.ndarray)) or not isinstance(images, Sequence):
            images = [images]
        options = {
            **({} if cache else {"cache": False}),
            **({} if longest_edge is None else {"longest_edge": longest_edge}),
            **({} if reuse is None else {"reuse": reuse}),
        }
        content = [{"type": "image", "image": im, **options} for im in images]
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]

    def start(
        self,
        messages: list[dict[str, Any]],
        *,
        split: bool | None = None,
        color: str = "rgb",
        config: GenerationConfig | None = None,
        **kw: Any,
    ) -> tuple[Generator, Prompt, EncodedImages]:
        """prepare → context check → encode → generator, in that order: a prompt that cannot fit fails before any
        image is encoded. `chat` and the server run on it.

        Args:
            messages: as `chat`.
            split: tile images (None: the model's rule); False: one tile each.
            color: "rgb", or "bgr" for numpy arrays from OpenCV.
            config: a GenerationConfig.
            **kw: generation options by name (max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty, seed,
                stop_ids, ignore_eos, logits_processors; choices, json_schema, regex, grammar for a structured
                answer), or config=GenerationConfig(...); a keyword wins over the same field of config.

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            gen, prompt, encoded = vlm.start(vlm.user_message("photo.jpg", "What is this?"), max_new_tokens=16)
            for token in gen:
                pass
            print(len(prompt.input_ids), encoded.tiles, gen.tokens, gen.timings)
        """
        config = GenerationConfig.from_kwargs(config=config, **kw)
        config.check()
        prompt = self.prepare(messages, split=split, color=color)
        check_context(len(prompt.input_ids), config.max_new_tokens, self.spec.max_positions)
        encoded = self.encode(prompt)
        return self.generator(prompt, encoded, config=config), prompt, encoded

    # ---------------------------------------------------------------------------------------- public API
    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_new_tokens: int | None = None,
        split: bool | None = None,
        color: str = "rgb",
        config: GenerationConfig | None = None,
        **kw,
    ) -> Result:
        """Answer the last user turn of a conversation (system prompt and earlier turns included).

        With choices=[...], json_schema=... or regex=... the answer is held to that form and `Result.value` is
        its parsed value; an answer that cannot complete within max_new_tokens raises IncompleteAnswerError.

        Args:
            messages: [{"role": "system"|"user"|"assistant", "content": text or a list of {"type": "text",
                "text": ...} and {"type": "image", "image": path, bytes, PIL image or array} items}, ...].
            max_new_tokens: answer length limit (default 128, edgevlm.defaults).
            split: tile images (None: the model's rule, on for SmolVLM2); False: one tile each, much faster.
            color: "rgb", or "bgr" for numpy arrays from OpenCV.
            config: a GenerationConfig with the generation options below.
            **kw: generation options by name (do_sample, temperature, top_k, top_p, repetition_penalty, seed,
                stop_ids, ignore_eos, logits_processors; choices, json_schema, regex, grammar for a structured
                answer), or config=GenerationConfig(...); a keyword wins over the same field of config.

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            r = vlm.chat([{"role": "system", "content": "Answer briefly."},
                          {"role": "user", "content": [{"type": "image", "image": "photo.jpg"},
                                                       {"type": "text", "text": "What is this?"}]}])
            print(r.text, r.new_tokens, r.finish_reason)
        """
        t0 = time.perf_counter()
        gen, prompt, encoded = self.start(
            messages,
            split=split,
            color=color,
            config=config,
            max_new_tokens=task_default(max_new_tokens, config, "chat"),
            **kw,
        )
        ids = list(gen)
        return self._result(ids, gen, prompt, encoded, time.perf_counter() - t0)

    def ask(
        self,
        images: ImageLike | Sequence[ImageLike] | None,
        question: str,
        *,
        max_new_tokens: int | None = None,
        split: bool | None = None,
        color: str = "rgb",
        cache: bool = True,
        longest_edge: int | None = None,
        reuse: TileReuse | None = None,
        **kw,
    ) -> Result:
        """Ask about one image, several images, or none (text only).

        Args:
            images: a path, bytes, PIL image or numpy array, a list of them, or None for a text-only question.
            question: the text of the question.
            max_new_tokens: answer length limit (default 128, edgevlm.defaults).
            split: tile images (None: the model's rule, on for SmolVLM2); False: one tile each, much faster.
            color: "rgb", or "bgr" for numpy arrays from OpenCV.
            cache: False: the images bypass the vision cache (frames seen once).
            longest_edge: split images are first resized to this many pixels along their longer side
                (transformers' size={"longest_edge": N}); the model's default is 4 tiles (2048 px for 512 px
                tiles, up to 17 encoder runs), 1024 gives at most 2 x 2 tiles plus the global view.
            reuse: a TileReuse kept for one source (a fixed camera): tiles whose pixels are the same as that
                source's last frame keep their features instead of running the encoder again (exact: the
                same tokens as without it); the Result's reused_tiles counts them.
            **kw: generation options by name (do_sample, temperature, top_k, top_p, repetition_penalty, seed,
                stop_ids, ignore_eos, logits_processors; choices, json_schema, regex, grammar for a structured
                answer), or config=GenerationConfig(...); a keyword wins over the same field of config.

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            r = vlm.ask(["a.jpg", "b.jpg"], "What changed?", longest_edge=1024)
            r = vlm.ask("door.jpg", "Is anyone at the door?", choices=["yes", "no"])
            print(r.value)  # "yes" or "no"
        """
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty; pass some text.")
        return self.chat(
            self.user_message(images, question, cache=cache, longest_edge=longest_edge, reuse=reuse),
            max_new_tokens=max_new_tokens,
            split=split,
            color=color,
            **kw,
        )

    def caption(
        self,
        image: ImageLike,
        *,
        max_new_tokens: int | None = None,
        prompt: str = DEFAULT_CAPTION_PROMPT,
        split: bool | None = None,
        color: str = "rgb",
        cache: bool = True,
        longest_edge: int | None = None,
        reuse: TileReuse | None = None,
        **kw,
    ) -> Result:
        """A description of one image (`ask` with the caption prompt and 64 new tokens by default).

        Args:
            image: a path, bytes, PIL image or numpy array.
            max_new_tokens: answer length limit (default 64, edgevlm.defaults).
            prompt: the instruction (default edgevlm.defaults.CAPTION_PROMPT).
            split: tile the image (None: the model's rule); False: one tile, much faster.
            color: "rgb", or "bgr" for numpy arrays from OpenCV.
            cache: False: the image bypasses the vision cache.
            longest_edge: resize a split image to this many pixels along its longer side first (as `ask`).
            reuse: a TileReuse for frames of one source (as `ask`).
            **kw: generation options by name (do_sample, temperature, top_k, top_p, repetition_penalty, seed,
                stop_ids, ignore_eos, logits_processors; choices, json_schema, regex, grammar for a structured
                answer), or config=GenerationConfig(...); a keyword wins over the same field of config.

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            r = vlm.caption("photo.jpg", max_new_tokens=64)
            print(r.text, r.vision_ms, r.prefill_ms, r.decode_tokens_per_s)
        """
        return self.ask(
            image,
            prompt,
            max_new_tokens=task_default(max_new_tokens, kw.get("config"), "caption"),
            split=split,
            color=color,
            cache=cache,
            longest_edge=longest_edge,
            reuse=reuse,
            **kw,
        )

    def caption_batch(
        self,
        images: Sequence[ImageLike],
        *,
        max_new_tokens: int | None = None,
        prompt: str = DEFAULT_CAPTION_PROMPT,
        split: bool | None = None,
        color: str = "rgb",
        cache: bool = True,
        longest_edge: int | None = None,
        reuse: Sequence[TileReuse | None] | None = None,
        **kw,
    ) -> list[Result]:
        """Captions of several images (live streams' newest frames): resized side by side, encoded one by one,
        decoded as one batch (batch.py); the same Results as `caption` on each, in order. Images whose prompts
        differ in length (other tile counts) and constrained answers are captioned one by one.

        Args:
            images: paths, bytes, PIL images or numpy arrays.
            max_new_tokens, prompt, split, color, cache, longest_edge: as `caption`, for every image.
            reuse: a TileReuse (or None) per image, each for its own source (as `caption`).
            **kw: generation options by name (do_sample, temperature, top_k, top_p, repetition_penalty, seed,
                stop_ids, ignore_eos, logits_processors; choices, json_schema, regex, grammar for a structured
                answer), or config=GenerationConfig(...); a keyword wins over the same field of config.

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            for r in vlm.caption_batch(["a.jpg", "b.jpg", "photo.jpg"], split=False):
                print(r.text)
        """
        max_new_tokens = task_default(max_new_tokens, kw.get("config"), "caption")
        config = GenerationConfig.from_kwargs(max_new_tokens=max_new_tokens, **kw)
        config.check()
        t0 = time.perf_counter()
        reuses: list[TileReuse | None] = [None] * len(images) if reuse is None else list(reuse)
        if len(reuses) != len(images):
            raise InputError(f"reuse has {len(reuses)} entries for {len(images)} images; give one (or None) each.")
        prompts = [
            self.prepare(
                self.user_message(im, prompt, cache=cache, longest_edge=longest_edge, reuse=r),
                split=split,
                color=color,
            )
            for im, r in zip(images, reuses)
        ]
        if len(prompts) < 2 or config.constraint is not None or len({len(p.input_ids) for p in prompts}) > 1:
            return [
                self.caption(
                    im,
                    max_new_tokens=max_new_tokens,
                    prompt=prompt,
                    split=split,
                    color=color,
                    cache=cache,
                    longest_edge=longest_edge,
                    reuse=r,
                    **kw,
                )
                for im, r in zip(images, reuses)
            ]
        check_context(len(prompts[0].input_ids), config.max_new_tokens, self.spec.max_positions)
        encoded = self._encode_batch(prompts)
        batch = BatchGenerator(
            self.decoder,
            [p.input_ids for p in prompts],
            [e.features for e in encoded],
            self.spec.image_token_id,
            config,
            self.spec.eos_ids,
        )
        rows = batch.run()
        total_s = time.perf_counter() - t0
        return [
            self._record(
                ids, replace(batch.timings, new_tokens=len(ids), finish_reason=finish or "length"), p, e, total_s
            )  # all finished by now
            for ids, finish, p, e in zip(rows, batch.finish, prompts, encoded)
        ]

    def stream(
        self,
        images: ImageLike | Sequence[ImageLike] | None,
        question: str = DEFAULT_CAPTION_PROMPT,
        *,
        max_new_tokens: int | None = None,
        split: bool | None = None,
        color: str = "rgb",
        longest_edge: int | None = None,
        **kw,
    ) -> Iterator[str]:
        """Yield text pieces as they are generated (never a broken UTF-8 character).

        Args:
            images: as `ask`: an image, a list of them, or None.
            question: the text of the question (default: the caption prompt).
            max_new_tokens, split, color, longest_edge: as `ask`.
            **kw: generation options by name (do_sample, temperature, top_k, top_p, repetition_penalty, seed,
                stop_ids, ignore_eos, logits_processors; choices, json_schema, regex, grammar for a structured
                answer), or config=GenerationConfig(...); a keyword wins over the same field of config.

        Example:
            import edgevlm

            vlm = edgevlm.load("./smolvlm2-256m-bundle")
            for piece in vlm.stream("photo.jpg", "Describe it."):
                print(piece, end="", flush=True)
        """
        gen, _, _ = self.start(
            self.user_message(images, question, longest_edge=longest_edge),
            split=split,
            color=color,
            max_new_tokens=task_default(max_new_tokens, kw.get("config"), "chat"),
            **kw,
        )
        first = True
        for piece in self.tokenizer.stream(gen):
            if first:  # the model starts its answer with a space after "Assistant:"
                piece = piece.lstrip()
                first = not piece
            if piece:
                yield piece
        self._check_complete(gen)

    def _check_complete(self, gen: Generator, result: Result | None = None) -> None:
        """A constrained answer that ended before its constraint was satisfied is an error, never a value."""
        c = gen.constraint
        if c is None or c.complete:
            return
        text = self.tokenizer.decode(gen.tokens)
        shown = text if len(text) <= 80 else text[:77] + "..."
        why = {
            "length": f"ran out of tokens (max_new_tokens={gen.config.max_new_tokens})",
            "cancelled": "was cancelled",
        }.get(gen.finish_reason or "", "stopped at a stop token")
        hint = "; raise max_new_tokens" if gen.finish_reason == "length" else ""
        raise IncompleteAnswerError(
            f"the answer {why} before it matched {c.constraint.description} (it got as far as {shown!r}){hint}.", result
        )

    def _result(self, ids: list[int], gen: Generator, p: Prompt, e: EncodedImages, total_s: float) -> Result:
        result = self._record(ids, gen.timings, p, e, total_s)
        if gen.constraint is not None:
            self._check_complete(gen, result)
            result.value = gen.constraint.constraint.parse(result.text)
        return result

    def _record(self, ids: list[int], t: Timings, p: Prompt, e: EncodedImages, total_s: float) -> Result:
        decode_steps = max(t.new_tokens - 1, 0)
        vision_s = p.decode_s + e.vision_s
        return Result(
            text=self.tokenizer.decode(ids).strip(),
            token_ids=ids,
            prompt_tokens=len(p.input_ids),
            new_tokens=t.new_tokens,
            finish_reason=t.finish_reason,
            vision_ms=vision_s * 1e3,
            prefill_ms=t.prefill_s * 1e3,
            first_token_ms=(vision_s + t.first_token_s) * 1e3,
            decode_tokens_per_s=decode_steps / t.decode_s if t.decode_s > 0 and decode_steps else 0.0,
            total_ms=total_s * 1e3,
            images=p.images,
            tiles=e.tiles,
            cached_images=e.cached,
            reused_tiles=e.reused,
        )
