"""Shapes-world corpora: videos with noisy WebVid-style captions, sidecars, manifests, truth.

:func:`generate_corpus` plans every video (:mod:`curate.shapes.plan`), picks the planted
copies and the caption noise, renders and encodes the videos in parallel, and writes the
sidecars, both manifests and ``ground_truth.json``. The same seed gives the same corpus.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..h264 import parse_fps
from .plan import (
    DEFAULT_FPS,
    DEFAULT_RESOLUTION_WEIGHTS,
    DEFAULT_RESOLUTIONS,
    VideoPlan,
    choice,
    clean_caption,
    facts_overlap,
    force_variety,
    is_noise,
    parse_resolution,
    plan_video,
    random_facts,
    truncate_caption,
)
from .truth import GroundTruth, VideoTruth
from .video import write_video
from .vocab import (
    BOILERPLATE,
    DUPLICATE_KINDS,
    NOISE_KINDS,
    NON_ASCII,
    SceneFacts,
)

log = logging.getLogger(__name__)

NTSC = Fraction(30000, 1001)


def iso_duration(seconds: float) -> str:
    """WebVid's duration format: whole seconds as ``PT00H00M12S``."""
    s = int(seconds)
    return f"PT{s // 3600:02d}H{s % 3600 // 60:02d}M{s % 60:02d}S"


def generate_corpus(
    out_dir: str | os.PathLike[str],
    *,
    videos: int = 20,
    seed: int = 0,
    noise_rate: float = 0.3,
    duplicate_rate: float = 0.1,
    transition_rate: float = 0.3,
    resolutions: Sequence[str | tuple[int, int]] | None = None,
    fps_choices: Sequence[float | str | Fraction] | None = None,
    min_scenes: int = 1,
    max_scenes: int = 5,
    scene_seconds: tuple[float, float] = (1.5, 5.0),
    timed_caption_rate: float = 0.5,
    ensure_variety: bool = False,
    preset: str = "veryfast",
    overwrite: bool = False,
    workers: int = 0,
    progress: bool = True,
) -> GroundTruth:
    """Write a shapes-world corpus under ``out_dir`` and return its ground truth.

    The same ``seed`` and settings give byte-identical ground truth and identical frames.
    ``ensure_variety`` forces at least one of each gradual transition, a 29.97 fps video,
    one video per caption-noise kind and a duplicate (as far as ``videos`` allows), for
    fixtures that must rely on them. ``preset`` is libx264's speed preset (``ultrafast`` is
    about three times faster to write than the default ``veryfast``, with larger files).

    Layout: ``videos/<id>.mp4`` with sidecars ``<id>.txt`` (the source caption) and, for some,
    ``<id>.json`` (timed captions); ``webvid.csv``, ``manifest.jsonl``, ``ground_truth.json``.
    ``workers`` processes render and encode videos in parallel (0: one per CPU, at most 4;
    1: in this process); the output does not depend on it.
    A folder that already holds a corpus is refused unless ``overwrite``; then the old corpus's
    files are removed first, so ``videos/`` never mixes two corpora.
    """
    _check_rates(
        videos=videos,
        workers=workers,
        noise_rate=noise_rate,
        duplicate_rate=duplicate_rate,
        transition_rate=transition_rate,
        timed_caption_rate=timed_caption_rate,
        min_scenes=min_scenes,
        max_scenes=max_scenes,
        scene_seconds=scene_seconds,
    )
    res, res_p = _resolution_weights(resolutions)
    fps_list = [parse_fps(f) for f in (fps_choices or DEFAULT_FPS)]
    root = Path(out_dir)
    vdir = root / "videos"
    _prepare_out_dir(root, overwrite)
    vdir.mkdir(parents=True, exist_ok=True)

    # 1. plan: which videos are copies, the originals' content, caption noise kinds
    plans, noise, dup_of, originals = _plan_videos(
        seed,
        videos,
        sizes=(res, res_p),
        fps_list=fps_list,
        scenes=(min_scenes, max_scenes),
        scene_seconds=scene_seconds,
        rates=(noise_rate, duplicate_rate, transition_rate),
        ensure_variety=ensure_variety,
    )

    # 2. captions (mismatched ones borrow another original's clean caption)
    cap_rng = np.random.default_rng([seed, 0xCA97])
    clean, captions = _captions(plans, noise, originals, dup_of, cap_rng)
    timed = {i: bool(cap_rng.random() < timed_caption_rate) for i in range(videos)}

    # 3. render and encode (videos are independent: spread over processes), write sidecars
    written = _encode_all(
        [(plans[i], vdir / f"{plans[i].video_id}.mp4") for i in range(videos)],
        preset=preset,
        workers=workers,
        progress=progress,
        desc=f"shapes world (seed {seed})",
    )
    truths = [
        _truth_of(i, plans, dup_of, written[i], (captions[i], clean, noise[i]), root, timed[i])
        for i in range(videos)
    ]

    # 4. the ground truth and the manifests
    params = {
        "videos": videos,
        "noise_rate": noise_rate,
        "duplicate_rate": duplicate_rate,
        "transition_rate": transition_rate,
        "resolutions": [f"{w}x{h}" for w, h in res],
        "fps_choices": [f"{f.numerator}/{f.denominator}" for f in fps_list],
        "min_scenes": min_scenes,
        "max_scenes": max_scenes,
        "scene_seconds": [scene_seconds[0], scene_seconds[1]],
        "timed_caption_rate": timed_caption_rate,
        "ensure_variety": ensure_variety,
    }
    return _publish(root, seed, params, truths)


def _resolution_weights(
    resolutions: Sequence[str | tuple[int, int]] | None,
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The frame sizes to draw from and their weights: the given ones, equally likely, else
    the default mix."""
    if resolutions:
        res = [parse_resolution(r) for r in resolutions]
        return res, np.full(len(res), 1.0 / len(res))
    return list(DEFAULT_RESOLUTIONS), np.asarray(DEFAULT_RESOLUTION_WEIGHTS)


def _plan_videos(
    seed: int,
    videos: int,
    *,
    sizes: tuple[list[tuple[int, int]], np.ndarray],
    fps_list: list[Fraction],
    scenes: tuple[int, int],
    scene_seconds: tuple[float, float],
    rates: tuple[float, float, float],
    ensure_variety: bool,
) -> tuple[dict[int, VideoPlan], dict[int, str], dict[int, tuple[int, str]], list[int]]:
    """Every video's plan and caption noise kind, which videos copy which original (and how),
    and the originals, drawn from ``seed``. ``rates``: noise, duplicate, transition."""
    noise_rate, duplicate_rate, transition_rate = rates
    rng = np.random.default_rng([seed, 0x5A4E])
    dup_of = _plan_copies(rng, videos, duplicate_rate, ensure_variety)
    originals = [i for i in range(videos) if i not in dup_of]
    plans: dict[int, VideoPlan] = {}
    noise: dict[int, str] = {}
    for i in originals:
        plans[i] = _plan_original(
            rng,
            f"shapes_{seed}_{i:04d}",
            sizes=sizes,
            fps_list=fps_list,
            scenes=scenes,
            scene_seconds=scene_seconds,
            transition_rate=transition_rate,
        )
        noise[i] = choice(rng, NOISE_KINDS[1:]) if rng.random() < noise_rate else "clean"
    if ensure_variety:
        force_variety(plans, noise, originals, NTSC, scenes[1], rng)
    for i, (j, kind) in sorted(dup_of.items()):
        plans[i] = _copy_plan(plans[j], f"shapes_{seed}_{i:04d}", kind, rng)
        noise[i] = noise[j]
    return plans, noise, dup_of, originals


def _truth_of(
    i: int,
    plans: dict[int, VideoPlan],
    dup_of: dict[int, tuple[int, str]],
    written: int,
    caption: tuple[str, dict[int, str], str],
    root: Path,
    timed: bool,
) -> VideoTruth:
    """Video ``i``'s ground truth, its sidecars written beside its file. ``caption``: its
    caption, the originals' clean captions, its noise kind."""
    text, clean, noise = caption
    original = dup_of[i][0] if i in dup_of else i
    truth = _video_truth(plans[i], written, text, clean[original], noise)
    if i in dup_of:
        truth.duplicate_of, truth.duplicate_kind = plans[original].video_id, dup_of[i][1]
        truth.duplicate_offset = plans[i].trim[0]
    _write_sidecars(truth, root / "videos", timed)
    truth.root = root.resolve()
    return truth


def _check_rates(
    *,
    videos: int,
    workers: int,
    min_scenes: int,
    max_scenes: int,
    scene_seconds: tuple[float, float],
    **rates: float,
) -> None:
    if videos < 1:
        raise ValueError(f"videos must be >= 1, got {videos!r}")
    for name, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate!r}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers!r}")
    if not 1 <= min_scenes <= max_scenes:
        raise ValueError(f"need 1 <= min_scenes <= max_scenes, got {min_scenes!r}, {max_scenes!r}")
    lo_s, hi_s = scene_seconds
    if not 0 < lo_s <= hi_s:
        raise ValueError(
            f"scene_seconds must be (low, high) with 0 < low <= high, got {scene_seconds!r}"
        )


def _plan_copies(
    rng: np.random.Generator, videos: int, duplicate_rate: float, ensure_variety: bool
) -> dict[int, tuple[int, str]]:
    """``{copy: (original, kind)}``: which videos are planted near-duplicates of which."""
    dup_of: dict[int, tuple[int, str]] = {}
    for i in range(1, videos):
        if rng.random() < duplicate_rate:
            originals = [j for j in range(i) if j not in dup_of]
            dup_of[i] = (choice(rng, originals), choice(rng, DUPLICATE_KINDS))
    if ensure_variety:
        # keep enough originals for every noise kind plus a clean one, and one duplicate
        keep = min(videos - 1, len(NOISE_KINDS) + 1)
        while len(dup_of) > max(1, videos - keep):
            dup_of.pop(min(dup_of))
        if not dup_of and videos >= 2:
            dup_of[videos - 1] = (0, "trim")
    return dup_of


def _plan_original(
    rng: np.random.Generator,
    video_id: str,
    *,
    sizes: tuple[list[tuple[int, int]], np.ndarray],
    fps_list: list[Fraction],
    scenes: tuple[int, int],
    scene_seconds: tuple[float, float],
    transition_rate: float,
) -> VideoPlan:
    """A random original video: its size (by weight), frame rate, scene count and quality."""
    res, res_p = sizes
    w, h = res[int(rng.choice(len(res), p=res_p))]
    fps = choice(rng, fps_list)
    k = int(rng.integers(scenes[0], scenes[1] + 1))
    crf = int(rng.integers(20, 27))
    return plan_video(
        video_id,
        rng,
        width=w,
        height=h,
        fps=fps,
        num_scenes=k,
        scene_seconds=scene_seconds,
        transition_rate=transition_rate,
        crf=crf,
    )


def _copy_plan(src: VideoPlan, video_id: str, kind: str, rng: np.random.Generator) -> VideoPlan:
    """The plan of a near-duplicate of ``src``: re-encoded, resized or trimmed."""
    plan = dataclasses.replace(src, video_id=video_id)
    if kind == "reencode":
        plan.crf = min(51, src.crf + int(rng.integers(8, 15)))
    elif kind == "resize":
        # shrink what is large, enlarge what is small: a copy stays readable either way
        scale = float(rng.choice([0.5, 0.75] if src.height >= 240 else [1.5, 2.0]))
        nw = round(src.width * scale / 2) * 2
        nh = round(src.height * scale / 2) * 2
        plan.render_size = (src.width, src.height)
        plan.width, plan.height = nw, nh
    else:  # trim: a few frames off the start and the end
        plan.trim = (int(rng.integers(2, 11)), int(rng.integers(0, 11)))
    return plan


def _captions(
    plans: dict[int, VideoPlan],
    noise: dict[int, str],
    originals: list[int],
    dup_of: dict[int, tuple[int, str]],
    rng: np.random.Generator,
) -> tuple[dict[int, str], dict[int, str]]:
    """Every original's clean caption, and every video's source caption (noise included)."""
    clean = {i: clean_caption([s.facts for s in plans[i].scenes], rng) for i in originals}
    captions: dict[int, str] = {}
    for i in originals:
        facts = [s.facts for s in plans[i].scenes]
        kind = noise[i]
        if kind == "mismatched":
            captions[i] = _mismatched(i, facts, plans, originals, clean, rng)
        elif kind == "boilerplate":
            captions[i] = choice(rng, BOILERPLATE)
        elif kind == "truncated":
            captions[i] = truncate_caption(clean[i], rng)
        elif kind == "empty":
            captions[i] = choice(rng, ("", " ", "\n", "  \t"))
        elif kind == "non_ascii":
            captions[i] = choice(rng, NON_ASCII)
        else:
            captions[i] = clean[i]
    for i, (j, _) in dup_of.items():
        captions[i] = captions[j]
    return clean, captions


def _mismatched(
    i: int,
    facts: list[SceneFacts],
    plans: dict[int, VideoPlan],
    originals: list[int],
    clean: dict[int, str],
    rng: np.random.Generator,
) -> str:
    """Another original's clean caption that names none of video ``i``'s scenes."""
    others = [
        j
        for j in originals
        if j != i and not facts_overlap(facts, [s.facts for s in plans[j].scenes])
    ]
    if others:
        return clean[choice(rng, others)]
    other = [random_facts(rng) for _ in range(len(facts))]
    while facts_overlap(facts, other):
        other = [random_facts(rng) for _ in range(len(facts))]
    return clean_caption(other, rng)


def _video_truth(plan: VideoPlan, written: int, caption: str, clean: str, noise: str) -> VideoTruth:
    vid = plan.video_id
    truth = plan.truth(f"videos/{vid}.mp4", f"videos/{vid}.txt")
    if written != truth.num_frames:
        raise RuntimeError(f"{vid}: wrote {written} frames, planned {truth.num_frames}")
    truth.source_caption = caption
    truth.clean_caption = clean
    truth.caption_noise = noise
    truth.caption_is_noise = is_noise(noise, caption, truth.scenes[0].facts)
    return truth


def _write_sidecars(truth: VideoTruth, vdir: Path, timed: bool) -> None:
    """``<id>.txt`` (the source caption) and, for a timed video, ``<id>.json``."""
    vid = truth.video_id
    (vdir / f"{vid}.txt").write_text(truth.source_caption, encoding="utf-8")
    if timed:
        truth.timed_captions_file = f"videos/{vid}.json"
        sidecar = {"caption": truth.source_caption, "captions": truth.timed_captions()}
        (vdir / f"{vid}.json").write_text(
            json.dumps(sidecar, indent=1, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )


def _publish(
    root: Path, seed: int, params: dict[str, Any], truths: list[VideoTruth]
) -> GroundTruth:
    """The corpus' ground truth, written with both manifests."""
    groups: dict[str, list[str]] = {}
    for t in truths:
        if t.duplicate_of is not None:
            groups.setdefault(t.duplicate_of, [t.duplicate_of]).append(t.video_id)
    gt = GroundTruth(
        seed=seed,
        params=params,
        videos=truths,
        duplicate_groups=list(groups.values()),
        root=root.resolve(),
    )
    write_manifests(gt, root)
    gt.to_json(root / GroundTruth.FILE_NAME)
    log.info(
        "shapes world seed %s: %s videos, %s scenes, %s noisy captions, %s duplicates in %s",
        seed,
        len(truths),
        sum(len(t.scenes) for t in truths),
        sum(t.caption_is_noise for t in truths),
        sum(t.duplicate_of is not None for t in truths),
        root,
    )
    return gt


def _prepare_out_dir(root: Path, overwrite: bool) -> None:
    vdir = root / "videos"
    old_truth = root / GroundTruth.FILE_NAME
    present = old_truth.exists() or (vdir.is_dir() and any(vdir.iterdir()))
    if not present:
        return
    if not overwrite:
        raise ValueError(
            f"{root}: already holds a shapes corpus or files in videos/; "
            "choose an empty folder or pass overwrite=True (--overwrite)"
        )
    owned: set[Path] = set()
    if old_truth.exists():
        try:
            old = json.loads(old_truth.read_text(encoding="utf-8"))
            for v in old.get("videos", []):
                stem = Path(v["file"]).stem
                owned |= {vdir / f"{stem}{ext}" for ext in (".mp4", ".txt", ".json")}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{old_truth}: cannot read the old ground truth: {exc}") from exc
    for f in owned:
        f.unlink(missing_ok=True)
    for name in ("webvid.csv", "manifest.jsonl", GroundTruth.FILE_NAME):
        (root / name).unlink(missing_ok=True)
    left = sorted(p.name for p in vdir.iterdir()) if vdir.is_dir() else []
    if left:
        raise ValueError(
            f"{vdir}: holds files that are not part of a shapes corpus ({', '.join(left[:5])}"
            f"{', ...' if len(left) > 5 else ''}); the folder manifest would pick them up"
        )


def _die_with_parent(parent: int) -> None:
    """An encoder process ends when the process that started it does, however that one ended
    (a SIGKILL leaves no chance to shut the pool down): through the kernel on Linux, else by
    watching the parent's pid."""
    import signal
    import threading
    import time

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL) == 0:  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # it died before the call
                os._exit(1)
            return
    except (AttributeError, OSError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _encode_one(plan: VideoPlan, path: Path, preset: str) -> int:
    return write_video(path, plan.frames(), fps=plan.fps, crf=plan.crf, preset=preset)


def _encode_all(
    jobs: list[tuple[VideoPlan, Path]],
    *,
    preset: str,
    workers: int,
    progress: bool,
    desc: str,
) -> list[int]:
    """Render and encode every plan; frame counts in job order."""
    if workers == 0:
        workers = min(4, os.cpu_count() or 1)
    workers = min(workers, len(jobs))
    if workers <= 1:
        return [_encode_one(plan, path, preset) for plan, path in _progress(jobs, progress, desc)]
    import concurrent.futures as cf
    import multiprocessing

    # spawn, not fork: the caller may hold threads (torch, Beam) that fork would orphan
    ctx = multiprocessing.get_context("spawn")
    counts: list[int] = [0] * len(jobs)
    with cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_die_with_parent, initargs=(os.getpid(),)
    ) as pool:
        # biggest first, so a late 720p video does not leave the other workers idle
        order = sorted(
            range(len(jobs)),
            key=lambda k: jobs[k][0].full_frames * jobs[k][0].width * jobs[k][0].height,
            reverse=True,
        )
        futures = {pool.submit(_encode_one, jobs[k][0], jobs[k][1], preset): k for k in order}
        for fut in _progress(cf.as_completed(futures), progress, desc, total=len(jobs)):
            k = futures[fut]
            try:
                counts[k] = fut.result()
            except Exception as exc:
                raise RuntimeError(f"{jobs[k][1]}: rendering or encoding failed: {exc}") from exc
    return counts


def _progress(
    items: Iterable[Any], enabled: bool, desc: str, total: int | None = None
) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="video", total=total)


def write_manifests(gt: GroundTruth, root: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``webvid.csv`` and ``manifest.jsonl`` (paths relative to ``root``)."""
    root = Path(root)
    out = {"webvid": root / "webvid.csv", "jsonl": root / "manifest.jsonl"}
    tmp = out["webvid"].with_name(".webvid.csv.part")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
        for v in gt.videos:
            page_dir = f"shapes_world/seed_{gt.seed}"
            writer.writerow(
                [
                    v.video_id,
                    v.file,
                    iso_duration(v.duration),
                    page_dir,
                    v.source_caption,
                ]
            )
    os.replace(tmp, out["webvid"])
    tmp = out["jsonl"].with_name(".manifest.jsonl.part")
    with tmp.open("w", encoding="utf-8") as fh:
        for v in gt.videos:
            row: dict[str, Any] = {
                "video_id": v.video_id,
                "uri": v.file,
                "caption": v.source_caption,
            }
            if v.timed_captions_file is not None:
                row["captions"] = v.timed_captions()
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out["jsonl"])
    return out
