"""A latency budget for live captions: measure what this machine pays per tile, per prompt token and per new token,
choose the detail level and answer length that keep each caption within the budget, and re-plan as captions come
in late (the machine got busier) or early.

Why a model of costs rather than trial and error: a caption's time is close to linear in the tiles it encodes, the
prompt tokens it reads and the tokens it writes, so three numbers measured once predict every plan, and one factor
(how much slower than measured the machine runs now) carries the changes of load. The factor is updated from the
work each caption actually did (tiles encoded after tile reuse, tokens written before end-of-sequence), so a cheap
caption of a static scene does not talk the planner into a plan a scene change would break.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..engine.detail import tiling
from ..engine.preprocess import tile_grid
from ..errors import InputError

# Richest first: detail, then answer length. The planner takes the first that fits.
LADDER: tuple[tuple[str, int], ...] = (
    ("high", 48),
    ("high", 32),
    ("medium", 32),
    ("medium", 24),
    ("low", 32),
    ("low", 24),
    ("low", 16),
    ("low", 8),
)
HEADROOM = 0.8  # a plan is chosen when its prediction is at most this share of the budget
TEXT_TOKENS = 24  # the prompt's tokens besides the image's (role, instruction, template)


@dataclass(frozen=True)
class Plan:
    """What the budget chose: `detail` (low, medium, high) and `max_new_tokens`, predicted to take `predicted_s`
    per caption on this machine at the time it was chosen (frame age included)."""

    detail: str
    max_new_tokens: int
    predicted_s: float
    budget_s: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "predicted_s": round(self.predicted_s, 3)}

    def __str__(self) -> str:
        return (
            f"--detail {self.detail}, {self.max_new_tokens} new tokens: {self.predicted_s:.2f} s predicted "
            f"for a budget of {self.budget_s:g} s"
        )


def check_budget(budget_s: Any) -> float:
    if (
        isinstance(budget_s, bool)
        or not isinstance(budget_s, (int, float))
        or not math.isfinite(budget_s)
        or not 0 < budget_s <= 3600
    ):
        raise InputError(f"budget={budget_s!r} must be a number of seconds above 0 and at most 3600, e.g. 1.")
    return float(budget_s)


class Budget:
    """Chooses and re-chooses a Plan for captions of frames of one size, from costs measured on this machine.

    Args:
        budget_s: seconds from a frame's capture to its caption.
        max_new_tokens: a ceiling on the plans' answer lengths (None: the ladder's own), or the one length to use
            when `fixed_tokens` (structured answers, which need their room to complete).
        fixed_tokens: vary only the detail level.
        sources: frames captioned per round (a watch of several sources captions them together).
    """

    def __init__(
        self, budget_s: float, *, max_new_tokens: int | None = None, fixed_tokens: bool = False, sources: int = 1
    ):
        self.budget_s = check_budget(budget_s)
        self.sources = sources  # frames per round (several sources are captioned together)
        self.cap = max_new_tokens
        self.fixed_tokens = fixed_tokens and max_new_tokens is not None
        self.per_tile = self.per_prompt_token = self.per_new_token = self.fixed = 0.0
        self.factor = 1.0  # how much slower than calibrated the machine runs now
        self.frame_age = 0.05  # seconds between a frame's capture and the start of its caption (EWMA)
        self.size: tuple[int, int] | None = None
        self.spec: Any = None
        self.plan: Plan | None = None
        self._fresh = True  # the plan's first caption is still to come (a warm-up, not judged)
        self._early = 0  # captions in a row after which a richer plan would have fitted

    # ------------------------------------------------------------------------------------------ calibration
    def calibrate(self, vlm: Any, image: Any, size: tuple[int, int], caption: Any) -> Plan:
        """Measure this machine on the first frame: `caption(image, detail, max_new_tokens)` -> Result, run at low
        detail twice (the first warms the sessions up), then at medium and high; then choose the first plan. The
        prompt's cost per token is the largest measured (the long prompts' attention costs more per token)."""
        self.spec, self.size = vlm.spec, size
        caption(image, "low", 8)
        runs = [caption(image, detail, 8) for detail in ("low", "medium", "high")]
        tiles = sum(r.tiles for r in runs)
        self.per_tile = sum(r.vision_ms for r in runs) / 1e3 / max(tiles, 1)
        self.per_prompt_token = max(r.prefill_ms / 1e3 / max(r.prompt_tokens, 1) for r in runs)
        steps = [(r.new_tokens - 1, r.decode_tokens_per_s) for r in runs if r.decode_tokens_per_s > 0]
        self.per_new_token = sum(n / s for n, s in steps) / max(sum(n for n, _ in steps), 1) if steps else 0.02
        self.fixed = max(
            0.0,
            min(
                r.total_ms / 1e3
                - r.vision_ms / 1e3
                - r.prefill_ms / 1e3
                - max(r.new_tokens - 1, 0) * self.per_new_token
                for r in runs
            ),
        )
        self.plan = self._choose(strict=True)
        return self.plan

    # ------------------------------------------------------------------------------------------ prediction
    def tiles(self, detail: str) -> int:
        assert self.spec is not None and self.size is not None
        kw = tiling(detail, self.spec.tile)
        rows, cols = tile_grid(self.size[0], self.size[1], self.spec, kw.get("split"), kw.get("longest_edge"))
        return rows * cols + 1 if rows else 1

    def work_s(self, tiles: int, prompt_tokens: int, new_tokens: int) -> float:
        """Seconds this work took when calibrated."""
        return (
            tiles * self.per_tile
            + prompt_tokens * self.per_prompt_token
            + max(new_tokens - 1, 0) * self.per_new_token
            + self.fixed
        )

    def predict(self, detail: str, max_new_tokens: int) -> float:
        """Seconds from capture to caption for a plan, at the machine's current speed, every tile encoded."""
        tiles = self.tiles(detail)
        prompt = tiles * self.spec.image_seq_len + TEXT_TOKENS
        return self.work_s(tiles, prompt, max_new_tokens) * self.sources * self.factor + self.frame_age

    def _ladder(self) -> list[tuple[str, int]]:
        if self.fixed_tokens:
            assert self.cap is not None
            return [(d, self.cap) for d in ("high", "medium", "low")]
        steps = [(d, min(n, self.cap) if self.cap else n) for d, n in LADDER]
        return list(dict.fromkeys(steps))

    def _choose(self, strict: bool = False) -> Plan:
        ladder = self._ladder()
        for detail, tokens in ladder:
            predicted = self.predict(detail, tokens)
            if predicted <= HEADROOM * self.budget_s:
                return Plan(detail, tokens, predicted, self.budget_s)
        detail, tokens = ladder[-1]
        predicted = self.predict(detail, tokens)
        if strict and predicted > self.budget_s:
            raise InputError(
                f"a budget of {self.budget_s:g} s is below what this machine can do: the cheapest plan (--detail "
                f"low, {tokens} new tokens) takes about {predicted:.2f} s here; raise the budget."
            )
        return Plan(detail, tokens, predicted, self.budget_s)

    # ------------------------------------------------------------------------------------------ re-planning
    def observe(self, result: Any, latency_s: float, frame_age_s: float) -> Plan:
        """Update the machine's speed from one caption and return the plan for the next (the same object when
        unchanged). A late caption, or a prediction over the headroom, moves to a cheaper plan at once; a richer
        plan comes back one step at a time, after two captions in a row say it fits. The first caption of a new
        plan only warms it up (new prompt lengths cost ONNX Runtime a first run): it is not judged."""
        assert self.plan is not None
        self.frame_age = 0.7 * self.frame_age + 0.3 * max(frame_age_s, 0.0)
        if self._fresh:
            self._fresh = False
            return self.plan
        encoded = result.tiles - getattr(result, "reused_tiles", 0)
        expected = self.work_s(encoded, result.prompt_tokens, result.new_tokens) * self.sources
        actual = result.total_ms / 1e3
        if expected > 0 and actual > 0:
            self.factor = 0.5 * self.factor + 0.5 * (actual / expected)
        ladder = self._ladder()
        now = ladder.index((self.plan.detail, self.plan.max_new_tokens))
        fits = [i for i, (d, n) in enumerate(ladder) if self.predict(d, n) <= HEADROOM * self.budget_s]
        best = fits[0] if fits else len(ladder) - 1
        late = latency_s > self.budget_s
        if best > now or (late and now + 1 < len(ladder)):
            self._switch(ladder, max(best, now + 1 if late else best))
        elif best < now:
            self._early += 1
            if self._early >= 2:
                self._switch(ladder, now - 1)
        else:
            self._early = 0
        return self.plan

    def _switch(self, ladder: list[tuple[str, int]], index: int) -> None:
        detail, tokens = ladder[index]
        self.plan = Plan(detail, tokens, self.predict(detail, tokens), self.budget_s)
        self._fresh, self._early = True, 0


class Pace:
    """A compute budget for a whole video file: `per_minute_s` seconds of captioning per minute of video.

    A timeline's frames are one tile each, so its knobs are how often it captions and how long each caption is.
    After each caption the pace compares the wall time spent so far (frame reading included) with what the
    budget allows for the video time covered, and sets the spacing of the next sample points: never closer than
    the caller's `every`, wider when the measured cost per caption says the budget cannot pay for that, wider still
    (up to 4 times) while the run is behind. Answers shorten first (to 32, then 24 tokens) when the spacing would have to grow
    past 1.5 and 3 times `every`, so that coverage in time is the last thing given up.

    Args:
        per_minute_s: seconds of captioning per minute of video.
        every: the closest spacing of sample points (the timeline's own `every`).
        max_new_tokens: the longest answer (the timeline's).
        fixed_tokens: keep max_new_tokens (structured answers need their room).
    """

    def __init__(self, per_minute_s: float, every: float, max_new_tokens: int, fixed_tokens: bool = False):
        self.per_minute_s = check_budget(per_minute_s)
        self.base_every, self.base_tokens, self.fixed_tokens = every, max_new_tokens, fixed_tokens
        self.every, self.max_new_tokens = every, max_new_tokens
        self.started: float | None = None
        self.captions = 0
        self.spent_s = 0.0
        self.lowest_every = self.highest_every = every

    def start(self, now: float) -> None:
        self.started = now

    def observe(self, video_s: float, now: float) -> None:
        """After a caption of the frame at `video_s`: the spacing and answer length for the next ones."""
        assert self.started is not None
        self.captions += 1
        self.spent_s = now - self.started
        per_caption = self.spent_s / self.captions
        needed = 60.0 * per_caption / self.per_minute_s  # the spacing this cost per caption can pay for
        # What the video so far allows, plus one caption: the first one is paid before any video has gone by.
        allowed = self.per_minute_s * video_s / 60.0 + per_caption
        behind = min(4.0, max(1.0, self.spent_s / allowed))
        ratio = needed / self.base_every
        if not self.fixed_tokens:
            self.max_new_tokens = self.base_tokens if ratio <= 1.5 else min(self.base_tokens, 32 if ratio <= 3 else 24)
        self.every = max(self.base_every, needed * behind)
        self.lowest_every = min(self.lowest_every, self.every)
        self.highest_every = max(self.highest_every, self.every)

    def summary(self, duration_s: float) -> str:
        minutes = max(duration_s, 1e-9) / 60.0
        return (
            f"budget {self.per_minute_s:g} s per minute of video: spent {self.spent_s:.1f} s on "
            f"{duration_s / 60:.1f} min ({self.spent_s / minutes:.1f} s per minute), {self.captions} caption(s), "
            f"sample points every {self.lowest_every:.1f}-{self.highest_every:.1f} s, "
            f"{self.max_new_tokens} new tokens at the end"
        )
