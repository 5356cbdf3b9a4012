"""`edgevlm` command line: a thin client of the Python API.

Errors the user can fix print one line to stderr and exit non-zero (2 bad input, 3 bad model, 4 export failed,
130 interrupted); never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from pathlib import Path

import click

from . import defaults
from .engine.bundle import DEFAULT_MODEL
from .engine.detail import DETAIL, tiling
from .engine.limits import DEFAULT_MAX_IMAGE_PIXELS
from .errors import ContextLengthError, EdgeVLMError, InputError
from .media.captions import FORMATS, CaptionWriter
from .media.outputs import OutputTarget

MODEL_HELP = "Bundle folder, folder in Hugging Face's onnx/ layout, or hub id."


class Number(click.ParamType):
    """A finite number within bounds: click's FloatRange lets 'nan' and 'inf' through."""

    name = "number"

    def __init__(self, kind: type = float, min: float | None = None, max: float | None = None, min_open: bool = False):
        self.kind, self.min, self.max, self.min_open = kind, min, max, min_open

    def convert(self, value, param, ctx):
        if isinstance(value, self.kind) and not isinstance(value, bool):
            x = value
        else:
            try:
                x = self.kind(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not {'an integer' if self.kind is int else 'a number'}.", param, ctx)
        if x != x or x in (float("inf"), float("-inf")):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        low_ok = self.min is None or (x > self.min if self.min_open else x >= self.min)
        if not low_ok or (self.max is not None and x > self.max):
            self.fail(f"{value} is out of range; {self._range()}.", param, ctx)
        return x

    def _range(self) -> str:
        low = "" if self.min is None else f"{'>' if self.min_open else '>='} {self.min:g}"
        high = "" if self.max is None else f"<= {self.max:g}"
        return "it must be " + " and ".join(p for p in (low, high) if p)


POSITIVE = Number(float, 0, min_open=True)
NON_NEGATIVE = Number(float, 0)
COUNT = Number(int, 1)


def _friendly(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            _signals_as_interrupt()
            return fn(*args, **kwargs)
        except EdgeVLMError as e:
            if isinstance(e, ContextLengthError) and e.max_positions:  # in flags, not the Python API's names
                click.echo(f"error: {e.told('--detail low', '--max-new-tokens')}", err=True)
            else:
                click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:  # `edgevlm ... | head`: the reader left; stop quietly like other CLI tools
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except MemoryError:
            click.echo("error: out of memory; try a smaller variant (--variant q4) or --detail low.", err=True)
            sys.exit(1)
        except Exception as e:  # a bug, not the user's fault: one line, the traceback on request
            if os.environ.get("EDGEVLM_DEBUG"):
                raise
            click.echo(
                f"error: unexpected {type(e).__name__}: {e} (this is a bug in edgevlm; run again with "
                f"EDGEVLM_DEBUG=1 for the traceback and report it)",
                err=True,
            )
            sys.exit(1)

    return wrapper


def model_options(fn):
    fn = click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help=MODEL_HELP)(fn)
    fn = click.option("--variant", "-v", default=None, help="fp32, fp16, int8, q4, mixed ... (default fp32).")(fn)
    fn = click.option("--providers", default=None, help="Comma list: cuda, cpu, openvino ... (default: auto).")(fn)
    fn = click.option("--threads", type=COUNT, default=None, help="Intra-op threads.")(fn)
    fn = click.option("--max-new-tokens", type=COUNT, default=None, help="Answer length limit in tokens.")(fn)
    fn = click.option(
        "--detail",
        "detail",
        type=click.Choice(list(DETAIL)),
        default=None,
        help="Images: " + "; ".join(f"{k}: {v}" for k, v in DETAIL.items()) + ".",
    )(fn)
    fn = click.option("--no-split", "detail", flag_value="low", help="Same as --detail low.")(fn)
    fn = click.option("--stream/--no-stream", default=None, help="Print tokens as they come (default on a terminal).")(
        fn
    )
    fn = click.option("--json", "as_json", is_flag=True, help="Print the result record as JSON.")(fn)
    fn = click.option(
        "--max-image-pixels",
        type=COUNT,
        default=None,
        help=f"Refuse larger images before decoding them (default {DEFAULT_MAX_IMAGE_PIXELS:,}).",
    )(fn)
    return fn


def constraint_options(fn):
    fn = click.option("--choices", default=None, help="Answer with exactly one of these, comma-separated (yes,no).")(fn)
    fn = click.option(
        "--json-schema", default=None, metavar="FILE", help="Answer with JSON valid for the schema in FILE."
    )(fn)
    fn = click.option("--regex", default=None, help="Answer with text the regular expression matches in whole.")(fn)
    return fn


CONSTRAINED_MAX_NEW_TOKENS = defaults.MAX_NEW_TOKENS["structured"]


def _constraint(choices, json_schema, regex):
    """The structured-answer constraint the flags ask for (None for free text), built before the model loads so
    a bad schema fails at once."""
    from .engine.structured import Constraint

    for label, text in (("choices", choices), ("JSON schema path", json_schema), ("regex", regex)):
        _check_text(label, text)
    given = [
        flag
        for flag, v in (("--choices", choices), ("--json-schema", json_schema), ("--regex", regex))
        if v is not None
    ]
    if len(given) > 1:
        raise InputError(f"give one of {', '.join(given)}, not several.")
    if choices is not None:
        return Constraint.choices([c.strip() for c in choices.split(",")])
    if json_schema is not None:
        return Constraint.json_schema(Path(json_schema))  # a file, even when its name starts with "{"
    if regex is not None:
        return Constraint.regex(regex)
    return None


def _load(model, variant, providers, threads, max_image_pixels=None):
    from . import load

    return load(model, variant=variant, providers=providers, threads=threads, max_image_pixels=max_image_pixels)


def _reject(ctx: click.Context, names: tuple[str, ...], why: str) -> None:
    """Flags the user typed that do nothing for this input: an error, not silence."""
    given = [n for n in names if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
    if given:
        opts: dict[str, str] = {}
        for p in ctx.command.params:  # --detail and --no-split set one value
            opts[p.name] = f"{opts[p.name]}/{p.opts[0]}" if p.name in opts else p.opts[0]
        flags = ", ".join(opts.get(n, n) for n in given)
        raise InputError(
            f"{flags} {'does' if len(given) == 1 else 'do'} not apply {why}; leave "
            f"{'it' if len(given) == 1 else 'them'} out."
        )


def _speed_hint(vlm, images, kw) -> None:
    """One line on stderr when this run takes edgevlm's slowest path: fp32 on the CPU with many tiles, which is what
    the defaults give for a photo (a newcomer waited 42.7 s where mixed + low took 3.8 s). The default
    stays fp32, the variant that reproduces PyTorch's tokens exactly (docs/design.md, "Defaults")."""
    if (
        vlm.variant != "fp32"
        or vlm.providers.get("vision_encoder", ["CPUExecutionProvider"])[0] != "CPUExecutionProvider"
    ):
        return
    from PIL import Image

    from .engine.preprocess import tile_grid

    tiles = 0
    for path in images:
        if not os.path.isfile(path):  # a FIFO, a device, "-": never opened here (the answer reports what it is)
            return
        try:
            with Image.open(path) as im:  # the header only
                rows, cols = tile_grid(im.width, im.height, vlm.spec, kw.get("split"), kw.get("longest_edge"))
        except Exception:  # the answer itself reports an unreadable image
            return
        tiles += rows * cols + 1 if rows else 1
    if tiles >= 5:
        click.echo(
            f"note: fp32 on the CPU with {tiles} image tiles is the slowest way to run; --variant mixed and "
            f"--detail medium (or low) are several times faster (README: Which variant?).",
            err=True,
        )


def _answer(vlm, images, question, max_new_tokens, detail, stream, as_json, constraint=None):
    kw = tiling(detail, vlm.spec.tile)
    _speed_hint(vlm, images, kw)
    if stream is None:
        stream = sys.stdout.isatty() and not as_json
    if stream and as_json:
        raise InputError("--stream and --json cannot be combined; the JSON record is printed at the end.")
    if stream:
        for piece in vlm.stream(images, question, max_new_tokens=max_new_tokens, constraint=constraint, **kw):
            click.echo(piece, nl=False)
        click.echo()
        return
    r = vlm.ask(images, question, max_new_tokens=max_new_tokens, constraint=constraint, **kw)
    _print_result(r, as_json)


def _print_result(r, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=1))
    else:
        click.echo(r.text)


@click.group()
@click.version_option(package_name="edgevlm")
def cli() -> None:
    """SmolVLM2 on edge hardware: caption and ask about images with ONNX Runtime."""


def main(args: list[str] | None = None) -> None:
    """The `edgevlm` entry point. Usage mistakes are one line too ("error: ... (see edgevlm CMD --help)"), exit 2,
    like every other input error, instead of click's three-line usage block."""
    try:
        code = cli.main(args=args, prog_name="edgevlm", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:  # bare `edgevlm`: the help, as a usage error
        click.echo(e.ctx.get_help(), err=True)
        sys.exit(2)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "edgevlm"
        message = e.format_message().replace("\n", " ")
        click.echo(f"error: {message} (see {where} --help)", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def video_options(fn):
    fn = click.option(
        "--mode",
        type=click.Choice(["timeline", "clip"]),
        default="timeline",
        show_default=True,
        help="Video: a caption per segment (timeline) or one description of the whole clip.",
    )(fn)
    fn = click.option(
        "--every",
        type=POSITIVE,
        default=5.0,
        show_default=True,
        help="Timeline: seconds between sample points (a segment is at least this long).",
    )(fn)
    fn = click.option(
        "--scene/--no-scene", default=True, show_default=True, help="Timeline: also cut segments at scene changes."
    )(fn)
    fn = click.option(
        "--budget-per-minute",
        type=Number(float, 0, 3600, min_open=True),
        default=None,
        help="Timeline: seconds of captioning per minute of video; sample points are spaced (never closer than "
        "--every) and answers shortened to keep to it, and the run says what it spent.",
    )(fn)
    fn = click.option(
        "--threshold",
        type=Number(float, 0, 255),
        default=6.0,
        show_default=True,
        help="Timeline: grey-level change below which a segment is merged, not captioned.",
    )(fn)
    fn = click.option("--fps", type=POSITIVE, default=None, help="Clip: frames per second to sample (model default).")(
        fn
    )
    fn = click.option("--max-frames", type=COUNT, default=None, help="Clip: most frames to sample (model default).")(fn)
    fn = click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True, help="Timeline output format."
    )(fn)
    fn = click.option(
        "--output",
        "-o",
        default=None,
        help="Timeline: write the captions to this file (atomically; - for standard output).",
    )(fn)
    return fn


def _split_inputs(inputs: tuple[str, ...]) -> tuple[list[str], str | None]:
    from .media.video import is_video_path

    videos = [i for i in inputs if is_video_path(i)]
    if not videos:
        return list(inputs), None
    if len(inputs) > 1:
        raise InputError("pass one video, or images only; a video cannot be mixed with other inputs.")
    return [], videos[0]


def _check_text(label: str, text: str | None) -> None:
    """Arguments arrive as str with undecodable bytes kept as surrogates (PEP 383): refuse those early."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"the {label} is not valid UTF-8 text; check your terminal's or script's encoding.") from None


VIDEO_ONLY = ("mode", "every", "scene", "threshold", "budget_per_minute", "fps", "max_frames", "fmt", "output")
TIMELINE_ONLY = ("every", "scene", "threshold", "budget_per_minute", "fmt", "output")


def archive_options(fn):
    fn = click.option(
        "--jobs",
        type=COUNT,
        default=None,
        help="Archive: worker processes, each with its own model (threads split between them).",
    )(fn)
    fn = click.option(
        "--ray",
        "ray_address",
        default=None,
        metavar="ADDRESS",
        help="Archive: run on a Ray cluster (HOST:PORT, 'auto' for the local one, 'local' to start one here).",
    )(fn)
    fn = click.option("--ray-actors", type=COUNT, default=None, help="Archive with --ray: actors (models) to run.")(fn)
    fn = click.option("--redo", is_flag=True, help="Archive: caption every input again, even finished ones.")(fn)
    return fn


ARCHIVE_ONLY = ("jobs", "ray_address", "ray_actors", "redo")


def _is_archive(inputs: tuple[str, ...], ctx: click.Context) -> bool:
    """Many files to caption one by one: a folder or a glob among the inputs, several videos, or an archive flag.
    A folder named like a media file (`x.png/`) is a mistaken file, not an archive: it gets the file error."""
    from .archive.plan import is_glob, wanted
    from .media.video import is_video_path

    flags = any(ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE for n in ARCHIVE_ONLY)
    folders = any(os.path.isdir(i) and not wanted(Path(i)) for i in inputs)
    return (
        flags
        or folders
        or any(is_glob(i) and not os.path.exists(i) for i in inputs)
        or sum(is_video_path(i) for i in inputs) > 1
    )


@cli.command()
@click.argument("image", nargs=-1, required=True)
@click.option("--prompt", "-p", default=None, help=f"Default: '{defaults.CAPTION_PROMPT}' / '{defaults.VIDEO_PROMPT}'")
@model_options
@constraint_options
@video_options
@archive_options
@click.pass_context
@_friendly
def caption(
    ctx,
    image,
    prompt,
    model,
    variant,
    providers,
    threads,
    max_new_tokens,
    detail,
    stream,
    as_json,
    max_image_pixels,
    choices,
    json_schema,
    regex,
    mode,
    every,
    scene,
    threshold,
    budget_per_minute,
    fps,
    max_frames,
    fmt,
    output,
    jobs,
    ray_address,
    ray_actors,
    redo,
):
    """Describe IMAGE (one or more image files) or one video file (timed captions, or one for the clip).

    Folders, globs or several videos with -o OUT_DIR caption an archive: one output per input, a manifest.jsonl,
    and a re-run resumes where the last one stopped (--jobs N processes, or --ray ADDRESS for a Ray cluster)."""
    _check_text("prompt", prompt)
    constraint = _constraint(choices, json_schema, regex)
    if constraint is not None and max_new_tokens is None:
        max_new_tokens = CONSTRAINED_MAX_NEW_TOKENS
    if _is_archive(image, ctx):
        _reject(
            ctx,
            ("mode", "fps", "max_frames", "stream", "as_json"),
            "to an archive run (each video gets a timeline file; --format jsonl for records)",
        )
        given = ctx.get_parameter_source("fmt") == click.core.ParameterSource.COMMANDLINE
        _archive(
            image,
            output,
            fmt if given else "srt",
            model,
            variant,
            providers,
            threads,
            max_image_pixels,
            detail,
            jobs,
            ray_address,
            ray_actors,
            redo,
            {
                "every": every,
                "scene": scene,
                "threshold": threshold,
                "max_new_tokens": max_new_tokens or defaults.MAX_NEW_TOKENS["timeline"],
                **({"budget_per_minute": budget_per_minute} if budget_per_minute else {}),
                **({"prompt": prompt} if prompt else {}),
                **({"constraint": constraint} if constraint else {}),
            },
        )
        return
    _reject(ctx, ARCHIVE_ONLY, "to one input (they are for an archive: a folder, a glob or several videos)")
    images, video = _split_inputs(image)
    if video is None:
        _reject(ctx, VIDEO_ONLY, "to images (they are for videos)")
        vlm = _load(model, variant, providers, threads, max_image_pixels)
        _answer(
            vlm,
            images,
            prompt or defaults.CAPTION_PROMPT,
            max_new_tokens or defaults.MAX_NEW_TOKENS["caption"],
            detail,
            stream,
            as_json,
            constraint,
        )
    elif mode == "clip":
        _reject(
            ctx,
            (*TIMELINE_ONLY, "detail", "stream", "max_image_pixels"),
            "with --mode clip (one answer; video frames are one tile each)",
        )
        vlm = _load(model, variant, providers, threads)
        _print_result(
            vlm.ask_video(
                video,
                prompt or defaults.VIDEO_PROMPT,
                max_new_tokens=max_new_tokens,
                fps=fps,
                max_frames=max_frames,
                constraint=constraint,
            ),
            as_json,
        )
    else:
        _reject(
            ctx,
            ("fps", "max_frames", "stream", "max_image_pixels", "detail"),
            "to a timeline (its frames are one tile each; --fps and --max-frames are for --mode clip)",
        )
        if as_json:
            raise InputError(
                "--json does not apply to a video timeline; use --format jsonl for one JSON record per segment."
            )
        target = OutputTarget(output, inputs=[video], model_dir=model)
        with CaptionWriter(fmt, target) as writer:  # opened before any work: a bad target fails in a second
            vlm = _load(model, variant, providers, threads)
            _timeline(
                vlm,
                video,
                prompt,
                max_new_tokens or defaults.MAX_NEW_TOKENS["timeline"],
                every,
                scene,
                threshold,
                writer,
                constraint,
                budget_per_minute,
            )


@cli.command()
@click.argument("image", nargs=-1)
@click.argument("question")
@model_options
@constraint_options
@click.option("--fps", type=POSITIVE, default=None, help="Video: frames per second to sample (model default).")
@click.option("--max-frames", type=COUNT, default=None, help="Video: most frames to sample (model default).")
@click.pass_context
@_friendly
def ask(
    ctx,
    image,
    question,
    model,
    variant,
    providers,
    threads,
    max_new_tokens,
    detail,
    stream,
    as_json,
    max_image_pixels,
    choices,
    json_schema,
    regex,
    fps,
    max_frames,
):
    """Answer QUESTION about IMAGE(s) or one video (no image: a text-only question)."""
    _check_text("question", question)
    constraint = _constraint(choices, json_schema, regex)
    images, video = _split_inputs(image)
    if video is not None:
        _reject(ctx, ("detail", "stream", "max_image_pixels"), "to a video (its frames are one tile each)")
        vlm = _load(model, variant, providers, threads)
        _print_result(
            vlm.ask_video(
                video, question, max_new_tokens=max_new_tokens, fps=fps, max_frames=max_frames, constraint=constraint
            ),
            as_json,
        )
    else:
        _reject(ctx, ("fps", "max_frames"), "to images (they are for a video)")
        vlm = _load(model, variant, providers, threads, max_image_pixels)
        _answer(
            vlm,
            images,
            question,
            max_new_tokens or defaults.MAX_NEW_TOKENS["chat"],
            detail,
            stream,
            as_json,
            constraint,
        )


def _archive(
    inputs,
    output,
    fmt,
    model,
    variant,
    providers,
    threads,
    max_image_pixels,
    detail,
    jobs,
    ray_address,
    ray_actors,
    redo,
    options,
) -> None:
    """Caption every input into OUT_DIR with a manifest; resume by default; a progress bar over the hours of
    video; a summary at the end. Inputs that fail are recorded and the rest go on; the exit code is 2 then."""
    from .archive.run import ArchiveJob, caption_archive

    if not output or output == "-":
        raise InputError(
            "captioning many files needs -o OUT_DIR: one output per input goes there, with a manifest.jsonl."
        )
    if os.path.exists(output) and not os.path.isdir(output):
        raise InputError(f"-o {output} is a file; an archive run writes into a folder.")
    if detail in ("low", "medium"):  # videos are captioned one tile per frame whatever the detail
        options["detail"] = detail
    job = ArchiveJob(
        list(inputs),
        output,
        fmt,
        load_kwargs={
            "model": model,
            "variant": variant,
            "providers": providers,
            "max_image_pixels": max_image_pixels,
            "progress": False,
        },
        options=options,
        jobs=jobs or 1,
        ray_address=None if ray_address == "local" else ray_address,
        use_ray=ray_address is not None,
        actors=ray_actors or 1,
        threads=threads,
        redo=redo,
    )
    bar = None

    def on_plan(items, todo, seconds):
        nonlocal bar
        click.echo(
            f"{len(items)} input(s) for {output}: {len(items) - len(todo)} already done, {len(todo)} to "
            f"caption ({_span(seconds)} of video)",
            err=True,
        )
        bar = _progress(seconds)
        bar.set_postfix_str(f"0/{len(todo)} files")

    finished = 0

    def on_row(row, item):
        nonlocal finished
        finished += 1
        bar.update(row.get("duration") or 0.0)
        bar.set_postfix_str(f"{finished} files")
        if row["status"] != "done":
            bar.clear()
            click.echo(f"failed: {row['error']}", err=True)  # the message names the file

    try:
        summary = caption_archive(job, on_plan, on_row)
    finally:
        if bar is not None:
            bar.close()
    click.echo(
        f"done {summary.done}, failed {summary.errors}, skipped {summary.skipped} (finished before) of "
        f"{summary.planned}; {_span(summary.video_seconds)} of video in {_span(summary.wall_seconds)} "
        f"({summary.files_per_hour:.0f} files/h, {summary.video_hours_per_hour:.1f} video-h/h); manifest: "
        f"{os.path.join(output, 'manifest.jsonl')}",
        err=True,
    )
    if summary.errors:
        sys.exit(2)


def _span(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.1f} min"
        if seconds < 7200
        else f"{seconds / 3600:.2f} h"
    )


def _progress(total: float | None):
    """A progress bar with ETA on a terminal; nothing when stderr is piped or redirected. Serial consoles often
    report a 0x0 size, which would hide tqdm's bar: 80x24 is assumed then."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    try:
        size = os.get_terminal_size(sys.stderr.fileno()) if tty else None
    except OSError:
        size = None
    cols, rows = (size.columns, size.lines) if size else (0, 0)
    return tqdm(
        total=round(total or 0, 1) or None,
        unit="s",
        leave=False,
        disable=not tty,
        ncols=cols or 80,
        nrows=rows or 24,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]",
    )


def _timeline(
    vlm,
    video,
    prompt,
    max_new_tokens,
    every,
    scene,
    threshold,
    writer: CaptionWriter,
    constraint=None,
    budget_per_minute=None,
) -> None:
    """Each sampled frame is one tile, as vlm.timeline's default (and watch's): a caption per segment, not a
    detailed reading of each frame."""
    from .media.timeline import DEFAULT_TIMELINE_PROMPT
    from .media.video import probe

    info = probe(video)
    bar = _progress(info.duration)

    def on_progress(done, total):
        bar.update(max(done - bar.n, 0))

    segments = vlm.timeline(
        video,
        every=every,
        scene=scene,
        threshold=threshold,
        prompt=prompt or DEFAULT_TIMELINE_PROMPT,
        max_new_tokens=max_new_tokens,
        on_progress=on_progress,
        constraint=constraint,
        budget_per_minute=budget_per_minute,
    )
    where = f" to {writer.path}" if writer.path else ""
    started, spacing, tokens = time.monotonic(), [], []
    try:
        for rec in segments:
            if writer.path is None and not bar.disable:
                bar.clear()
            writer.write(rec)
            if budget_per_minute is not None:
                spacing.append(rec.timings["every_s"])
                tokens.append(rec.timings["max_new_tokens"])
    except KeyboardInterrupt:  # the writer keeps every complete cue
        click.echo(f"stopped: wrote {writer.count} caption(s){where}", err=True)
        raise
    finally:
        bar.close()
    if writer.path:
        click.echo(f"wrote {writer.count} caption(s){where}", err=True)
    if budget_per_minute is not None and spacing:
        spent, minutes = time.monotonic() - started, max(info.duration, 1e-9) / 60
        click.echo(
            f"budget {budget_per_minute:g} s per minute of video: spent {spent:.1f} s on {minutes:.1f} min "
            f"({spent / minutes:.1f} s per minute); sample points every {min(spacing):g}-{max(spacing):g} s, "
            f"{min(tokens)}-{max(tokens)} new tokens per caption",
            err=True,
        )


def _signals_as_interrupt() -> None:
    """SIGTERM (a service manager, `kill`) and SIGHUP (the terminal went away) end every command the way Ctrl-C
    does: outputs completed or discarded, temporary folders removed, sources closed, exit code 130."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


@cli.command()
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--prompt", "-p", default=None, help="Question asked of each frame (default: a one-sentence caption).")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help=MODEL_HELP)
@click.option("--variant", "-v", default=None, help="fp32, fp16, int8, q4, mixed ... (default fp32).")
@click.option("--providers", default=None, help="Comma list: cuda, cpu, openvino ... (default: auto).")
@click.option("--threads", type=COUNT, default=None, help="Intra-op threads.")
@click.option(
    "--max-new-tokens",
    type=COUNT,
    default=None,
    help=f"Answer length limit in tokens (default {defaults.MAX_NEW_TOKENS['live']}; {CONSTRAINED_MAX_NEW_TOKENS} for a structured answer).",
)
@constraint_options
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text", show_default=True)
@click.option(
    "--output", "-o", default=None, help="Also append the captions to this file, one complete line each as they come."
)
@click.option(
    "--threshold",
    type=Number(float, 0, 255),
    default=6.0,
    show_default=True,
    help="Motion gate: grey-level change under which a frame is skipped (0: caption every frame).",
)
@click.option(
    "--min-interval", type=NON_NEGATIVE, default=0.0, show_default=True, help="Seconds between captions, at least."
)
@click.option(
    "--heartbeat", type=POSITIVE, default=None, help="Caption an unchanged scene again after this many seconds."
)
@click.option("--max-captions", type=COUNT, default=None, help="Stop after this many captions.")
@click.option(
    "--retry-for",
    type=NON_NEGATIVE,
    default=30.0,
    show_default=True,
    help="Seconds to keep reconnecting to a network stream that dropped.",
)
@click.option("--no-realtime", is_flag=True, help="A video file is read as fast as possible, not at its own pace.")
@click.option(
    "--detail",
    type=click.Choice(list(DETAIL)),
    default=None,
    help="Frames: " + "; ".join(f"{k}: {v}" for k, v in DETAIL.items() if k != "high") + "; high: the model's grid "
    "(default low).",
)
@click.option(
    "--budget",
    type=Number(float, 0, 3600, min_open=True),
    default=None,
    help="Seconds from a frame's capture to its caption: measures this machine on the first frame, then chooses "
    "--detail and the answer length to stay within it, and re-plans as captions run late or early (stderr says "
    "what it chose).",
)
@click.option(
    "--no-tile-reuse",
    is_flag=True,
    help="Encode every tile of every frame (by default a split frame encodes only the tiles that changed since its "
    "source's last frame: the same tokens, less time).",
)
@click.option(
    "--trigger",
    default=None,
    help="Regular expression; a matching caption is an event (stderr). With --choices/--json-schema/--regex: "
    "a condition on the answer instead, such as 'person == true and count >= 2' or 'value == yes'.",
)
@click.option(
    "--trigger-exit",
    type=Number(int, 1, 255),
    default=None,
    help="With --trigger: stop at the first event and exit with this code (1-255).",
)
@click.option(
    "--hold",
    type=Number(int, 1, 10000),
    default=1,
    show_default=True,
    help="With --trigger: consecutive matching captions before an event starts (answers flicker; 2 or 3 rides it out).",
)
@click.option(
    "--hold-s",
    type=Number(float, 0, 86400),
    default=0.0,
    show_default=True,
    help="With --trigger: and at least this many seconds from the first of them.",
)
@click.option(
    "--cooldown",
    type=Number(float, 0, 86400),
    default=0.0,
    show_default=True,
    help="With --trigger: seconds without a match before an event ends and the trigger re-arms (a match within "
    "them continues the same event).",
)
@click.option(
    "--evidence",
    type=click.Path(file_okay=False),
    default=None,
    help="With --trigger: a folder for events.jsonl and each event's frame (<id>.jpg) and clip (<id>.mp4).",
)
@click.option(
    "--lookback",
    type=Number(float, 0, 600),
    default=0.0,
    show_default=True,
    help="With --evidence: seconds of video before the event that its clip starts with.",
)
@click.option(
    "--after",
    type=Number(float, 0, 600),
    default=0.0,
    show_default=True,
    help="With --evidence: seconds of video after the event that its clip goes on for.",
)
@_friendly
def watch(
    sources,
    prompt,
    model,
    variant,
    providers,
    threads,
    max_new_tokens,
    choices,
    json_schema,
    regex,
    fmt,
    output,
    threshold,
    min_interval,
    heartbeat,
    max_captions,
    retry_for,
    no_realtime,
    detail,
    budget,
    no_tile_reuse,
    trigger,
    trigger_exit,
    hold,
    hold_s,
    cooldown,
    evidence,
    lookback,
    after,
):
    """Caption a live SOURCE as it happens: a camera index or /dev/videoN, an RTSP/HTTP/UDP/TCP URL, or a video
    file replayed in real time. Several SOURCEs are captioned together (one batch per round), each caption naming
    its source. Stop with Ctrl-C (or SIGTERM); outputs are completed, not cut."""
    from .media.live import DEFAULT_LIVE_PROMPT, Trigger
    from .media.sources import open_source

    _check_text("prompt", prompt)
    _check_text("trigger", trigger)
    if trigger is None:
        given = [f for f, v in (("--trigger-exit", trigger_exit), ("--evidence", evidence)) if v is not None]
        given += [f for f, v in (("--hold", hold != 1), ("--hold-s", hold_s), ("--cooldown", cooldown)) if v]
        if given:
            verb = "needs" if len(given) == 1 else "need"
            raise InputError(f"{', '.join(given)} {verb} --trigger PATTERN: it says what an event is.")
    if evidence is None and (lookback or after):
        raise InputError("--lookback and --after make clips for the events folder: give --evidence DIR.")
    if budget is not None and detail is not None:
        raise InputError("--budget chooses the detail level itself; drop --detail (or --budget).")
    detail = detail or "low"
    constraint = _constraint(choices, json_schema, regex)
    if max_new_tokens is None:
        max_new_tokens = defaults.MAX_NEW_TOKENS["live"] if constraint is None else CONSTRAINED_MAX_NEW_TOKENS
    fired = []

    def on_trigger(c):
        fired.append(c)
        what = "pattern" if constraint is None else "when"
        click.echo(f"TRIGGER t={c.timestamp:.2f}s {what}={trigger!r}: {' '.join(c.text.split())}", err=True)

    def on_event(e):
        if e.phase == "end":
            click.echo(f"EVENT END t={e.end:.2f}s {e.id} ({e.reason})", err=True)
        elif e.phase == "clip":
            click.echo(f"EVENT CLIP {e.id}: {evidence}/{e.clip['file']} ({e.clip['frames']} frames)", err=True)

    trig = None
    if trigger is not None:
        kinds = {"pattern": trigger} if constraint is None else {"when": trigger}
        trig = Trigger(
            **kinds,
            callback=on_trigger,
            stop=trigger_exit is not None,
            hold=hold,
            hold_s=hold_s,
            cooldown=cooldown,
            on_event=on_event,
        )
    inputs = [s for s in sources if os.path.exists(s)]
    output = None if output == "-" else output  # the captions go to standard output anyway
    to_file = CaptionWriter(fmt, OutputTarget(output, inputs, model_dir=model), mode="append") if output else None
    srcs = []
    try:
        vlm = _load(model, variant, providers, threads)
        for source in sources:
            srcs.append(open_source(source, retry_for=retry_for, realtime=not no_realtime))
    except BaseException:
        for src in srcs:
            src.close()
        if to_file is not None:
            to_file.commit()  # nothing was appended; the file is as it was
        raise
    try:
        captions = vlm.watch(
            srcs if len(srcs) > 1 else srcs[0],
            prompt=prompt or DEFAULT_LIVE_PROMPT,
            max_new_tokens=max_new_tokens,
            threshold=threshold,
            min_interval=min_interval,
            heartbeat=heartbeat,
            trigger=trig,
            evidence=evidence,
            lookback=lookback,
            after=after,
            max_captions=max_captions,
            constraint=constraint,
            split=detail != "low",
            longest_edge=tiling(detail, vlm.spec.tile).get("longest_edge"),
            reuse_tiles=not no_tile_reuse,
            budget_s=budget,
        )
        screen = CaptionWriter(fmt)
        plan = None
        try:
            for c in captions:
                if c.plan is not None and c.plan != plan:  # what the budget chose, at the start and when it changes
                    plan = c.plan
                    click.echo(
                        f"budget {plan['budget_s']:g} s: --detail {plan['detail']}, {plan['max_new_tokens']} new "
                        f"tokens ({plan['predicted_s']:.2f} s predicted)",
                        err=True,
                    )
                if to_file is not None:  # the file first: whatever was shown is in the file too
                    to_file.write(c)
                screen.write(c)
        except KeyboardInterrupt:
            click.echo("stopped", err=True)
    finally:
        if to_file is not None:
            to_file.commit()  # every line is already in the file; a lost stream keeps them all
        for src in srcs:
            src.close()
            s = src.stats
            where = f"{src.name}: " if len(srcs) > 1 else ""
            click.echo(
                f"{where}frames read {s.frames_read}, dropped {s.frames_dropped}, reconnects {s.reconnects}", err=True
            )
    if fired and trigger_exit is not None:
        sys.exit(trigger_exit)


@cli.command()
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--json", "as_json", is_flag=True)
@_friendly
def info(model, as_json):
    """What a model folder holds: architecture, variants, files, verification, and this machine's providers."""
    from .engine import bundle, hub, kernels, providers

    root = bundle.resolve(model, onnx=False)  # a hub id: configs and manifest only, no ONNX file
    listing = hub.repo_files(model) if hub.is_remote(model) else None
    b = bundle.open_bundle(root, listing=listing)
    s = b.spec
    data = bundle.describe(b)
    data["providers_available"], data["providers_auto"] = providers.available(), providers.choose(None)
    data["kernels"] = kernels.status()
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    click.echo(f"model:        {data['model']} ({'edgevlm bundle' if data['bundle'] else 'onnx/ layout'})")
    click.echo(
        f"architecture: {data['architecture']}  tile {s.tile}, patch {s.patch}, scale {s.scale_factor}, "
        f"{s.image_seq_len} tokens per tile; text {s.hidden} hidden x {s.num_layers} layers"
    )
    for v in sorted(data["variants"]):
        extra = " (default)" if v == data["default_variant"] else ""
        if "verification" in data and v in data["verification"]:
            r = data["verification"][v]
            extra += f"  verified: tokens equal={r['tokens_equal']}, max|dlogit|={r['max_abs_logit_diff']:.2e}"
            if r.get("top1_agreement") is not None:
                extra += f", top-1 agreement {100 * r['top1_agreement']:.1f} %"
        size = f"{data['variant_bytes'][v] / 1e6:8.1f} MB" if "variant_bytes" in data else ""
        click.echo(f"variant {v:6s} {size}{extra}")
    if data.get("verification"):
        click.echo(
            "              (against PyTorch at export: fp32 must give its exact tokens; quantized variants "
            "trade some top-1 agreement for speed and size, a few percent with trained weights and more with "
            "random test weights, so tokens equal=False is expected there)"
        )
    click.echo(
        f"providers:    available {', '.join(data['providers_available'])}; "
        f"auto order {', '.join(data['providers_auto'])}"
    )
    graphs = ", ".join(Path(k).name for k in b.kernel_graphs) or "none in this bundle"
    click.echo(f"kernels:      {data['kernels']}; kernel graphs: {graphs}")


@cli.command()
@click.argument("model", default=DEFAULT_MODEL)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0 exposes it to the network: set --api-key then).",
)
@click.option("--port", type=Number(int, 0, 65535), default=8000, show_default=True)
@click.option("--variant", "-v", default=None, help="fp32, fp16, int8, q4, mixed ... (default fp32).")
@click.option("--providers", default=None, help="Comma list: cuda, cpu, openvino ... (default: auto).")
@click.option("--threads", type=COUNT, default=None, help="Intra-op threads.")
@click.option(
    "--api-key",
    default=None,
    envvar="EDGEVLM_API_KEY",
    help="Require 'Authorization: Bearer KEY' on /v1 (or set EDGEVLM_API_KEY).",
)
@click.option(
    "--max-queue",
    type=Number(int, 0),
    default=8,
    show_default=True,
    help="Requests that may wait beside the running one; more get HTTP 429 with Retry-After.",
)
@click.option("--timeout", type=POSITIVE, default=120.0, show_default=True, help="Seconds per request.")
@click.option(
    "--max-body-mb",
    type=POSITIVE,
    default=20.0,
    show_default=True,
    help="Largest chat request (images as data URLs); larger gets HTTP 413.",
)
@click.option(
    "--max-image-pixels",
    type=COUNT,
    default=None,
    help=f"Refuse larger images with HTTP 413 (default {DEFAULT_MAX_IMAGE_PIXELS:,}).",
)
@click.option(
    "--allow-remote-images",
    is_flag=True,
    help="Let requests name http(s) image URLs for the server to fetch (off: only data: URLs).",
)
@click.option(
    "--cors", "cors", multiple=True, help="Allow browser pages from this origin (repeatable; off by default)."
)
@click.option("--model-name", default=None, help="The model id /v1/models reports (default: the folder name).")
@click.option(
    "--max-sessions",
    type=Number(int, 0, 1024),
    default=8,
    show_default=True,
    help='Camera sessions (a request\'s "session") whose last frame is kept so unchanged tiles are not encoded '
    "again; about 10 MB each, least recently used dropped first (0: off).",
)
@click.option(
    "--max-realtime",
    type=Number(int, 0, 256),
    default=4,
    show_default=True,
    help="Realtime sessions (WebSocket /v1/realtime: frames in, captions and events out) open at once (0: off).",
)
@click.option(
    "--realtime-timeout",
    type=Number(float, 1, 3600),
    default=30.0,
    show_default=True,
    help="Seconds a realtime client may read nothing (its captioning pauses meanwhile) before it is closed.",
)
@_friendly
def serve(
    model,
    host,
    port,
    variant,
    providers,
    threads,
    api_key,
    max_queue,
    timeout,
    max_body_mb,
    max_image_pixels,
    allow_remote_images,
    cors,
    model_name,
    max_sessions,
    max_realtime,
    realtime_timeout,
):
    """Serve MODEL over HTTP: OpenAI's /v1/chat/completions (streaming too), /v1/models, /health, /metrics, a
    realtime WebSocket session (/v1/realtime) and a live webcam page at /. Needs `pip install edgevlm[server]`."""
    try:
        import uvicorn

        from .server.app import ServerSettings, create_app
        from .server.realtime import RealtimeLimits
    except ImportError as e:
        raise InputError(
            f"edgevlm serve needs the server extra ({e.name} is missing): pip install 'edgevlm[server]'"
        ) from None
    vlm = _load(model, variant, providers, threads, max_image_pixels)
    name = model_name or os.path.basename(os.path.normpath(str(model))) or "smolvlm2"
    settings = ServerSettings(
        model_name=name,
        api_key=api_key or None,
        max_queue=max_queue,
        timeout=timeout,
        max_body_bytes=int(max_body_mb * (1 << 20)),
        allow_remote_images=allow_remote_images,
        cors_origins=tuple(cors),
        max_sessions=max_sessions,
        realtime=RealtimeLimits(max_sessions=max_realtime, send_timeout=realtime_timeout),
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        click.echo(
            f"warning: listening on {host} without --api-key: anyone who can reach it can use the model.", err=True
        )
    click.echo(f"edgevlm serving {name} on http://{host}:{port} (page: /, API: /v1, queue {max_queue})", err=True)
    access = logging.getLogger("edgevlm.server.access")  # edgevlm's own access line, with status, ms and tokens
    if not access.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    uvicorn.run(create_app(vlm, settings), host=host, port=port, log_level="warning", access_log=False)


@cli.command()
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--variants", default=None, help="Comma list (default: every variant in the model).")
@click.option("--providers", default=None, help="Execution providers (default: auto).")
@click.option("--threads", type=COUNT, default=None)
@click.option("--runs", type=COUNT, default=3, show_default=True, help="Timed runs per variant (median reported).")
@click.option("--new-tokens", type=COUNT, default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_friendly
def bench(model, variants, providers, threads, runs, new_tokens, as_json):
    """Speed and memory per variant on workload W1 (one 512x512 tile, ~80 prompt tokens, 32 new tokens)."""
    from . import bench as bench_mod
    from .engine import bundle

    root = bundle.resolve(model)
    found = bundle.open_bundle(root)
    names = [v.strip() for v in variants.split(",") if v.strip()] if variants is not None else found.variants
    if not names:
        raise InputError("--variants is empty; name at least one variant (edgevlm info MODEL lists them).")
    for v in names:
        found.part_files(v)  # an unknown variant fails here, in one line, before any child process starts
    if providers:
        from .engine.providers import choose

        choose(providers)
    results = []
    for v in names:
        r = bench_mod.measure(str(root), v, providers, threads, runs, new_tokens)
        results.append(r)
        if not as_json:
            click.echo(
                f"{v}: end-to-end {r.end_to_end_s:.3f} s, vision {r.vision_ms_per_tile:.0f} ms/tile, "
                f"prefill {r.prefill_ms:.0f} ms, decode {r.decode_tokens_per_s:.1f} tok/s, "
                f"peak RSS {r.peak_rss_mb:.0f} MB",
                err=True,
            )
    imp = bench_mod.import_time()
    if as_json:
        click.echo(json.dumps({"import_s": imp, "results": [r.__dict__ for r in results]}, indent=1))
    else:
        click.echo(bench_mod.table(results))
        click.echo(f"\nimport edgevlm: {imp * 1000:.0f} ms")


@cli.command()
@click.argument("source")
@click.option("--output", "-o", "out_dir", required=True, help="Bundle folder to write.")
@click.option("--variants", default=None, help="Comma list from fp32,fp16,int8,q4,mixed (default: all).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--threads", type=COUNT, default=None)
@click.option("--revision", default=None, help="Hub revision when SOURCE is a hub id.")
@_friendly
def export(source, out_dir, variants, force, threads, revision):
    """Export a SmolVLM2 checkpoint (hub id or folder) to a verified ONNX bundle. Needs `edgevlm[export]`."""
    try:
        from edgevlm_export.pipeline import export as run_export
    except ImportError as e:
        click.echo(
            f"error: the exporter needs the export extra ({e.name} is missing): pip install 'edgevlm[export,cpu]'",
            err=True,
        )
        sys.exit(4)
    manifest = run_export(
        source,
        out_dir,
        variants,
        force=force,
        threads=threads,
        revision=revision,
        log=lambda m: click.echo(m, err=True),
    )
    ok = ", ".join(
        f"{v}: {'tokens equal' if r['all_tokens_equal'] else 'tokens differ'}"
        for v, r in manifest["verification"].items()
    )
    click.echo(f"wrote {out_dir} ({manifest['architecture']}; {ok})")


if __name__ == "__main__":
    main()
