"""A text report of a curate run folder (``curate inspect DIR``)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from curate import shards
from schemas import RunManifest


def _number(value: object) -> float | None:
    """A finite number from a manifest value, else None (manifests can be edited by hand)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if np.isfinite(value) else None


def histogram(
    scores: np.ndarray, *, bins: int = 20, width: int = 40, cutoff: float | None = None
) -> list[str]:
    """A horizontal text histogram of the finite ``scores``; the bin holding ``cutoff`` is
    marked ``<- threshold``."""
    scores = np.asarray(scores, np.float64)
    scores = scores[np.isfinite(scores)]
    cutoff = _number(cutoff)
    bins = max(1, int(bins))
    if len(scores) == 0:
        return ["  (no caption scores)"]
    lo, hi = float(scores.min()), float(scores.max())
    if cutoff is not None:
        lo, hi = min(lo, cutoff), max(hi, cutoff)
    if hi <= lo:
        hi = lo + 1e-6
    counts, edges = np.histogram(scores, bins=bins, range=(lo, hi))
    top = max(1, int(counts.max()))
    lines = []
    for i, n in enumerate(counts):
        a, b = edges[i], edges[i + 1]
        bar = "#" * int(round(width * n / top))
        mark = ""
        if cutoff is not None and (a <= cutoff < b or (i == bins - 1 and cutoff == b)):
            mark = f"  <- threshold {cutoff:.4f}"
        lines.append(f"  [{a:+.3f}, {b:+.3f}) {n:6d} {bar}{mark}")
    return lines


def report(folder: str | os.PathLike[str], *, stories: int = 3, bins: int = 20) -> str:
    out = Path(folder)
    manifest = RunManifest.read(out)
    clips = shards.read_table(out, "clips")
    story_rows = shards.read_table(out, "stories")
    failures = shards.read_table(out, "failures").to_pylist()
    c = manifest.counts
    lines = [
        f"run folder {out}",
        f"  created {manifest.created_at}, schema {manifest.schema_version}",
    ]
    cfg = manifest.config
    cutoff = _number(cfg.get("cutoff"))
    lines.append(
        "  model {m}; detector {d}; threshold {t} (cut-off {co}); dedup cosine >= {dd}".format(
            m=cfg.get("model"),
            d=cfg.get("detector"),
            t=cfg.get("threshold"),
            co="n/a" if cutoff is None else f"{cutoff:.4f}",
            dd=cfg.get("dedup_threshold"),
        )
    )
    if cfg.get("captioner") not in (None, "none"):
        lines.append(f"  captioner {cfg['captioner']}")
    if cfg.get("stopped"):
        lines.append(f"  STOPPED: {cfg['stopped']}")

    lines.append("")
    lines.append(
        f"inputs {c.get('inputs', 0)}: {c.get('videos', 0)} usable manifest rows, "
        f"{c.get('manifest_rejected', 0)} rejected, {c.get('pending', 0)} pending"
    )
    status = Counter(clips.column("status").to_pylist())
    reasons = Counter(r for r in clips.column("reason").to_pylist() if r)
    lines.append(f"clips {clips.num_rows}: " + ", ".join(f"{k} {v}" for k, v in status.items()))
    for reason, n in reasons.most_common():
        lines.append(f"  dropped: {reason:<20} {n}")
    sources = Counter(s or "none" for s in clips.column("recaption_source").to_pylist())
    lines.append(
        "prompts from: " + ", ".join(f"{k} {n}" for k, n in sources.most_common())
        if clips.num_rows
        else "prompts from: (no clips)"
    )
    lines.append(f"stories {story_rows.num_rows}")

    lines.append("")
    lines.append(f"failures {len(failures)}")
    by_stage = Counter((f["stage"], f["error_type"]) for f in failures)
    for (stage, etype), n in sorted(by_stage.items()):
        lines.append(f"  {stage:<14} {etype:<22} {n}")
    for f in failures[:5]:
        lines.append(f"    e.g. {f['input_id']}: {f['message'][:100]}")

    lines.append("")
    given = np.asarray(
        [s for s in clips.column("caption_score").to_pylist() if s is not None], np.float64
    )
    scores = given[np.isfinite(given)]
    odd = len(given) - len(scores)
    lines.append(
        f"caption scores ({len(scores)} scored clips" + (f", {odd} not a number)" if odd else ")")
    )
    if len(scores):
        q = np.percentile(scores, [5, 25, 50, 75, 95])
        lines.append("  p5 {:.3f}  p25 {:.3f}  median {:.3f}  p75 {:.3f}  p95 {:.3f}".format(*q))
    lines += histogram(scores, bins=bins, cutoff=cutoff)

    if stories and story_rows.num_rows:
        lines.append("")
        lines.append("example stories")
        for row in story_rows.slice(0, stories).to_pylist():
            lines.append(f"  {row['story_id']} ({row['duration_s']:.1f} s, {row['fps']:g} fps)")
            for seg in row["segments"]:
                lines.append(f"    [{seg['start_s']:6.2f} - {seg['end_s']:6.2f} s] {seg['prompt']}")
    return "\n".join(lines)
