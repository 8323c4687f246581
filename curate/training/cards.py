"""Model cards of the shipped shapes-world models.

The text of each card is a template next to this module (``cards/*.md``, ``str.format`` fields
into the training report and the held-out metrics); the functions here compute the values it
needs. A model trained in several runs (``--init``) lists every run: each report chains the
one before as ``continued_from``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curate import shapes

from .data import TRAIN_RENDER_SIZES

TEMPLATES = Path(__file__).resolve().parent / "cards"

#: the CLIP card's paragraph on storyboards (for a model trained on them)
CLIP_BOARDS = """- Storyboards: per scene one more image, the four frames the curate sampler takes
  (uniform over the scene, a few frames off each end) squashed and tiled 2×2 in time order
  (`curate.storyboard.storyboard`): {boards:,} storyboards. Their
  captions must match in motion too; each storyboard's first hard negative is the *opposite*
  motion (left/right, up/down, growing/shrinking), so direction is learned and not only axis.
"""

#: the CLIP card's per-scene table (for a model evaluated on whole scenes)
CLIP_SCENE_ROWS = """
Per scene (the four sampled frames; mean frame embedding averaged with the storyboard's, as
re-captioning ranks prompts), zero-shot against all {n_captions:,} captions:

| metric | value |
|---|---|
| colour | {pct[scene_color_acc]} |
| shape | {pct[scene_shape_acc]} |
| motion | {pct[scene_motion_acc]} |
| background | {pct[scene_background_acc]} |
| all four right | {pct[scene_all_acc]} |
"""

CLIP_MOTION_LIMIT = {
    True: "- Motion is read from storyboards only (`scoring.json` declares the grid, and the scorer "
    "then embeds one per scene); a single frame still carries no motion.",
    False: "- Motion words carry no signal from one frame; score motion with several frames elsewhere.",
}


def runs(report: dict) -> list[dict]:
    """The training runs behind a model, first to last (``continued_from`` chains them)."""
    earlier = report.get("continued_from")
    return (runs(earlier) if earlier else []) + [report]


def _template(name: str) -> str:
    return (TEMPLATES / f"{name}.md").read_text()


def _clip_run_row(i: int, r: dict) -> str:
    s = r["settings"]
    init = "from scratch" if not s.get("init") else f"run {i - 1}'s weights"
    negs = r.get("board_negatives", "shape, colour or background")
    return (
        f"| {i} | {init} | {r.get('device', 'cpu')} | {r['steps']:,} | {s['batch_size']} + "
        f"{s['batch_size'] if s.get('storyboards') else 0} | {s['lr']} | "
        f"{s['hard_negatives']} ({negs}) | {r['train_seconds']:.0f} s | {r['final_loss']:.3f} |"
    )


def clip_card(report: dict, metrics: dict) -> str:
    s = report["settings"]
    pct = {k: f"{100 * v:.1f} %" for k, v in metrics.items() if k.endswith("_acc")}
    scale = s["image_size"] / 64
    n_captions = (
        len(shapes.COLORS) * len(shapes.SHAPES) * len(shapes.MOTIONS) * len(shapes.BACKGROUNDS)
    )
    chain = runs(report)
    total_s = sum(r["train_seconds"] for r in chain)
    boards = bool(s.get("storyboards"))
    return _template("shapes-clip").format(
        s=s,
        report=report,
        metrics=metrics,
        pct=pct,
        size_mb=report["size_bytes"] / 1e6,
        sizes=", ".join(
            f"{round(w * scale / 2) * 2}×{round(h * scale / 2) * 2}" for w, h in TRAIN_RENDER_SIZES
        ),
        rows="\n".join(_clip_run_row(i + 1, r) for i, r in enumerate(chain)),
        seen=sum(r.get("images_seen", r["steps"] * r["settings"]["batch_size"]) for r in chain),
        total_s=total_s,
        total_min=total_s / 60,
        board_text=CLIP_BOARDS.format(boards=report.get("train_storyboards", 0)) if boards else "",
        scene_rows=(
            CLIP_SCENE_ROWS.format(n_captions=n_captions, pct=pct)
            if "scene_motion_acc" in metrics
            else ""
        ),
        motion_limit=CLIP_MOTION_LIMIT[boards],
    )


def _captioner_run_row(i: int, r: dict) -> str:
    s = r["settings"]
    return (
        f"| {i} | {'from scratch' if not s.get('init') else 'previous run'} | "
        f"{s['seed']} | {r.get('device', 'cpu')} | {r['steps']:,} | "
        f"{s['batch_size']} | {s['lr']} | {r['train_seconds']:.0f} s | "
        f"{r['final_loss']:.3g} |"
    )


def captioner_card(report: dict, metrics: dict) -> str:
    slots = ("color", "shape", "motion", "background", "color_shape_motion", "exact")
    pct: dict[str, Any] = {k: f"{100 * metrics[k]:.1f} %" for k in slots}
    return _template("shapes-captioner").format(
        s=report["settings"],
        report=report,
        metrics=metrics,
        pct=pct,
        size_mb=report["size_bytes"] / 1e6,
        rows="\n".join(_captioner_run_row(i + 1, r) for i, r in enumerate(runs(report))),
        examples="\n".join(
            f"| {e['truth']} | {e['caption']} |" for e in metrics.get("examples", [])[:6]
        ),
    )
