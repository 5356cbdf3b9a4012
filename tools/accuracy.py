"""What quantization costs on a trained decoder: teacher-forced top-1 agreement of each variant with fp32.

    python -m tools.accuracy WORK_DIR [--variants int8,q4,mixed]

Builds (once) the 256M-architecture checkpoint whose text decoder holds the real SmolLM2-135M-Instruct weights,
exports it with every variant (recording time and peak RSS), and measures agreement over REAL_TEXT: public-domain
prose in the chat format the model was tuned on.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

# Public-domain prose (Lewis Carroll, 1865; Jerome K. Jerome, 1889), framed as a chat turn.
REAL_TEXT = (
    "<|im_start|>User: Tell me a short story about a girl and a rabbit.<end_of_utterance>\nAssistant: "
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: "
    "once or twice she had peeped into the book her sister was reading, but it had no pictures or conversations "
    "in it, and what is the use of a book, thought Alice, without pictures or conversations? So she was "
    "considering in her own mind (as well as she could, for the hot day made her feel very sleepy and stupid), "
    "whether the pleasure of making a daisy-chain would be worth the trouble of getting up and picking the "
    "daisies, when suddenly a White Rabbit with pink eyes ran close by her. There was nothing so very remarkable "
    "in that; nor did Alice think it so very much out of the way to hear the Rabbit say to itself, Oh dear! Oh "
    "dear! I shall be late! But when the Rabbit actually took a watch out of its waistcoat-pocket, and looked at "
    "it, and then hurried on, Alice started to her feet, for it flashed across her mind that she had never "
    "before seen a rabbit with either a waistcoat-pocket, or a watch to take out of it, and burning with "
    "curiosity, she ran across the field after it, and fortunately was just in time to see it pop down a large "
    "rabbit-hole under the hedge.<end_of_utterance>\n"
    "<|im_start|>User: Now describe a boat trip on a river.<end_of_utterance>\nAssistant: "
    "There were four of us, George, and William Samuel Harris, and myself, and Montmorency. We were sitting in "
    "my room, smoking, and talking about how bad we were, bad from a medical point of view I mean, of course. "
    "We were all feeling seedy, and we were getting quite nervous about it. We agreed that what we wanted was "
    "rest and a complete change, and George suggested the river. He said we should have fresh air, exercise, "
    "and quiet; the constant change of scene would occupy our minds, and the hard work would give us a good "
    "appetite, and make us sleep well. So we hired a boat, packed a hamper, and set off up the Thames from "
    "Kingston one bright morning, with the sun on the water and the trees leaning over the banks.<end_of_utterance>\n"
)


def run(work: Path, variants: list[str], threads: int | None = None) -> dict:
    from edgevlm_export.pipeline import export
    from edgevlm_export.verify import teacher_forced_agreement

    from tools.checkpoints import make_checkpoint

    ckpt, bundle = work / "ckpt-256m-real", work / "bundle-256m-real"
    if not (ckpt / "config.json").exists():
        t = time.perf_counter()
        make_checkpoint(ckpt, arch="256M", size="full", real_decoder=True)
        print(f"checkpoint written in {time.perf_counter() - t:.0f} s")
    if not (bundle / "edgevlm.json").exists():
        export(ckpt, bundle, ",".join(["fp32", *variants]), force=True, threads=threads)
    manifest = json.loads((bundle / "edgevlm.json").read_text())
    agreement = teacher_forced_agreement(bundle, variants, REAL_TEXT, threads=threads)
    sizes = {
        v: sum(manifest["files"][rel]["size"] for rel in parts.values()) for v, parts in manifest["variants"].items()
    }
    return {
        "agreement_vs_fp32": agreement,
        "variant_bytes": sizes,
        "export_stats": manifest["export_stats"],
        "verification": {
            v: {
                "tokens_equal": r["all_tokens_equal"],
                "max_abs_logit_diff": r["max_abs_logit_diff"],
                "min_teacher_forced_top1_vs_torch": r["min_teacher_forced_top1"],
            }
            for v, r in manifest["verification"].items()
        },
        "peak_rss_mb_this_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work_dir")
    p.add_argument("--variants", default="fp16,int8,q4,mixed")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    print(json.dumps(run(Path(args.work_dir), args.variants.split(","), args.threads), indent=1))


if __name__ == "__main__":
    main()
