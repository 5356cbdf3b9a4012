"""The three SmolVLM2 architectures, as transformers config dictionaries.

Why a table here: the exporter must recognise a checkpoint's family (for the manifest) and the test-checkpoint
builder must be able to write any of the three, at full or tiny size, without a model hub.
"""

from __future__ import annotations

from dataclasses import dataclass

VOCAB_SIZE = 49280
IMAGE_TOKEN_ID = 49190


@dataclass(frozen=True)
class Architecture:
    name: str
    vision: dict
    text: dict
    scale_factor: int
    longest_edge: int  # processor size.longest_edge (4 tiles per side)
    video_longest_edge: int

    @property
    def tile(self) -> int:
        return self.vision["image_size"]

    @property
    def image_seq_len(self) -> int:
        per_side = self.vision["image_size"] // self.vision["patch_size"]
        return per_side * per_side // (self.scale_factor**2)


_VISION_B16 = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16, image_size=512
)
_VISION_SO400M = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    patch_size=14,
    image_size=384,
)

ARCHITECTURES: dict[str, Architecture] = {
    "256M": Architecture(
        "256M",
        _VISION_B16,
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            rope_theta=100000.0,
        ),
        scale_factor=4,
        longest_edge=2048,
        video_longest_edge=512,
    ),
    "500M": Architecture(
        "500M",
        _VISION_B16,
        dict(
            hidden_size=960,
            intermediate_size=2560,
            num_hidden_layers=32,
            num_attention_heads=15,
            num_key_value_heads=5,
            rope_theta=100000.0,
        ),
        scale_factor=4,
        longest_edge=2048,
        video_longest_edge=512,
    ),
    "2.2B": Architecture(
        "2.2B",
        _VISION_SO400M,
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=24,
            num_attention_heads=32,
            num_key_value_heads=32,
            rope_theta=273768.0,
        ),
        scale_factor=3,
        longest_edge=1536,
        video_longest_edge=384,
    ),
}


def tiny(arch: Architecture) -> Architecture:
    """Same geometry (patch, tile, scale factor, head layout ratio) as `arch`, with a few small layers.

    Tile and patch sizes stay real so the image rules and the token counts are the real ones; only widths and
    depths shrink, which keeps a test export to seconds.
    """
    gqa = arch.text["num_attention_heads"] != arch.text["num_key_value_heads"]
    text = dict(
        arch.text,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2 if gqa else 4,
    )
    vision = dict(arch.vision, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    return Architecture(arch.name, vision, text, arch.scale_factor, arch.longest_edge, arch.video_longest_edge)


def identify(config: dict) -> str | None:
    """Name the architecture family of a SmolVLM config dict (None when it matches none exactly)."""
    vision, text = config.get("vision_config", {}), config.get("text_config", {})
    for name, arch in ARCHITECTURES.items():
        if (
            vision.get("patch_size") == arch.vision["patch_size"]
            and vision.get("image_size") == arch.vision["image_size"]
            and config.get("scale_factor") == arch.scale_factor
            and text.get("hidden_size") == arch.text["hidden_size"]
            and text.get("num_hidden_layers") == arch.text["num_hidden_layers"]
        ):
            return name
    return None
