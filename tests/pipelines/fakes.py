"""Small stand-ins for the decoding and scoring steps, to test the pipeline's plumbing alone.

A fake video is a text file: ``scenes=3`` (three scenes), ``crash`` (the decoder segfaults),
``hang`` (it never returns), ``broken`` (a domain error), ``slow=0.5;scenes=2`` (sleeps first).
Its frames are flat colours derived from the video id, so embeddings are deterministic and two
videos with the same ``look=`` share them (duplicates).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import VideoOpenFailure

DIM = 16


def _params(text: str) -> dict[str, str]:
    out = {}
    for part in text.strip().split(";"):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip()
    return out


def _unit(seed: str, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(int(hashlib.sha1(seed.encode()).hexdigest()[:12], 16))
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeDecoder:
    def __init__(self, *, frames_per_scene: int = 2, scene_frames: int = 10) -> None:
        self.frames_per_scene = frames_per_scene
        self.scene_frames = scene_frames

    def setup(self) -> None:
        self.pid = os.getpid()

    def __call__(self, video: dict[str, Any]) -> list[dict[str, Any]]:
        path = Path(video["uri"])
        if not path.exists():
            raise VideoOpenFailure("no such file", uri=video["uri"], video_id=video["video_id"])
        p = _params(path.read_text())
        if "slow" in p:
            time.sleep(float(p["slow"]))
        if "crash" in p:
            os.kill(os.getpid(), signal.SIGSEGV)
        if "hang" in p:
            time.sleep(3600)
        if "broken" in p:
            raise VideoOpenFailure(
                "moov atom not found", uri=video["uri"], video_id=video["video_id"]
            )
        look = p.get("look", video["video_id"])
        clips = []
        for i in range(int(p.get("scenes", "1"))):
            start, end = i * self.scene_frames, (i + 1) * self.scene_frames
            shade = int(hashlib.sha1(f"{look}/{i}".encode()).hexdigest()[:2], 16)
            clips.append(
                {
                    "clip_id": f"{video['video_id']}-{i:03d}",
                    "video_id": video["video_id"],
                    "scene_index": i,
                    "uri": video["uri"],
                    "start_frame": start,
                    "end_frame": end,
                    "start_s": start / 10.0,
                    "end_s": end / 10.0,
                    "fps": 10.0,
                    "width": 4,
                    "height": 4,
                    "transition": "start" if i == 0 else "cut",
                    "detector_score": None,
                    "source_caption": video.get("caption"),
                    "status": "kept",
                    "frames": np.full((self.frames_per_scene, 4, 4, 3), shade, np.uint8),
                    "look": f"{look}/{i}",
                }
            )
        return clips


class FakeScorer:
    """Caption score: the number after ``score`` in the caption (``"a cat score 0.7"``)."""

    def __init__(self, *, fail_on: str = "explode") -> None:
        self.fail_on = fail_on

    def setup(self) -> None:
        pass

    def process_all(self, records: list[dict[str, Any]]):
        for r in records:
            out = dict(r)
            caption = out.get("source_caption") or ""
            if self.fail_on and self.fail_on in caption:
                raise RuntimeError(f"scorer exploded on {out['clip_id']}")
            frames = np.asarray(out["frames"])
            look = out.pop("look", None)
            if look is None:  # real frames: the embedding follows the mean colour
                look = str(np.round(frames.reshape(-1, 3).mean(axis=0) / 32).astype(int).tolist())
            emb = _unit(look)
            out["frame_embeddings"] = np.stack([emb] * len(frames))
            out["embedding"] = emb.tolist()
            if out.get("status") == "dropped":
                out["caption_score"] = None
                out["frame_scores"] = None
            else:
                words = caption.split()
                score = float(words[words.index("score") + 1]) if "score" in words else 0.5
                out["caption_score"] = score
                out["frame_scores"] = [score] * len(frames)
            yield out


def write_fake_corpus(root: Path, specs: dict[str, tuple[str, str]]) -> Path:
    """``{video_id: (file content, caption)}`` → ``root/manifest.jsonl``; returns its path."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for vid, (content, caption) in specs.items():
        path = root / f"{vid}.mp4"
        if content is not None:
            path.write_text(content)
        lines.append(json.dumps({"video_id": vid, "uri": str(path), "caption": caption}))
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


class FakeRecaptioner:
    """Every clip keeps its own caption as its prompt; the kept ones make the story (same
    contract as :class:`curate.recaption.Recaptioner`, no model)."""

    def setup(self) -> None:
        self.bank: list[str] = []

    def teardown(self) -> None:
        pass

    def use_corpus_bank(self, prompts):
        self.bank = list(prompts)

    def recaption_record(self, video, clips):
        if "recaption-fails" in (video.get("caption") or ""):
            raise ValueError("no prompt fits")
        clips = [
            dict(c, recaption=c.get("source_caption"), recaption_source="source") for c in clips
        ]
        kept = [c for c in clips if c["status"] == "kept"]
        if not kept:
            return clips, None
        segments = [
            {
                "start_s": c["start_s"],
                "end_s": c["end_s"],
                "start_frame": c["start_frame"],
                "end_frame": c["end_frame"],
                "prompt": c["recaption"],
                "clip_id": c["clip_id"],
                "score": c["caption_score"],
            }
            for c in kept
        ]
        story = {
            "story_id": video["video_id"],
            "video_id": video["video_id"],
            "uri": video["uri"],
            "fps": kept[0]["fps"],
            "duration_s": clips[-1]["end_s"],
            "num_frames": clips[-1]["end_frame"],
            "segments": segments,
        }
        return clips, story


def fake_components():
    """The fake decoder, scorer and re-captioner; the real filter and dedup, on signatures
    that are the fake embeddings alone (the fake frames are flat colours)."""
    from pipelines.curate import Components

    return Components(
        FakeDecoder,
        {},
        FakeScorer,
        {},
        recaptioner=FakeRecaptioner,
        dedup={"pixel_weight": 0.0},
    )
