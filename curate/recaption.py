"""Re-captioning: turn each video's scenes into a timed prompt sequence (a stories row).

A WebVid-style caption narrates a whole video ("a red circle ..., then a blue square ...").
Re-captioning splits it into fragments, aligns them to the scenes in temporal order by CLIP
similarity, and gives scenes the caption does not describe a prompt from a prompt bank (faiss
inner-product search over the bank's CLIP text embeddings) or from an image-to-text model.
Consecutive scenes with one prompt merge, and the result is a story (``schemas.STORIES_SCHEMA``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from schemas.stories import validate_story
from schemas.tables import CAPTION_DROP_REASONS, DROPPED

from .captioner import Captioner
from .captions import clean_caption, normalize_caption, split_caption
from .choices import FALLBACKS
from .clip_score import ClipScorer
from .models import DEFAULT_MODEL
from .prompt_bank import PLURAL_ENDINGS, PromptBank, load_prompt_bank, prompt_words
from .step import Step, check_choice
from .storyboard import scene_similarity
from .work import joined_clips

logger = logging.getLogger(__name__)

#: the extras only re-captioning reads (see :func:`Recaptioner.recaption_record`)
RECAPTION_INPUTS = ("frame_embeddings", "scene_embedding", "fragment", "generated_caption")

# --- alignment --------------------------------------------------------------------------------


def align_monotonic(sims: np.ndarray) -> list[int]:
    """Assign each scene (row) a fragment (column), fragment indices non-decreasing over scenes,
    maximising the summed similarity. Several consecutive scenes may share a fragment (an
    event the splitter cut in two) and a fragment may go unused (an event the video lacks).

    Dynamic programming: ``best[s, f]`` is the best total for scenes ``0..s`` with scene ``s``
    on fragment ``f``; ``best[s, f] = sims[s, f] + max(best[s - 1, :f + 1])``. O(S·F).
    """
    sims = np.asarray(sims, np.float64)
    if sims.ndim != 2 or sims.shape[1] == 0:
        raise ValueError(f"need a (scenes, fragments) matrix with >= 1 fragment, got {sims.shape}")
    n_s, n_f = sims.shape
    if n_s == 0:
        return []
    best = np.empty_like(sims)
    back = np.zeros((n_s, n_f), np.int64)
    best[0] = sims[0]
    for s in range(1, n_s):
        prefix_arg = np.zeros(n_f, np.int64)
        arg = 0
        for f in range(n_f):
            if best[s - 1, f] > best[s - 1, arg]:
                arg = f
            prefix_arg[f] = arg
        best[s] = sims[s] + best[s - 1, prefix_arg]
        back[s] = prefix_arg
    out = [int(np.argmax(best[-1]))]
    for s in range(n_s - 1, 0, -1):
        out.append(int(back[s, out[-1]]))
    return out[::-1]


# --- stories from clips ------------------------------------------------------------------------


def _same_segment(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether scene ``b`` continues scene ``a``'s segment: adjacent, the same prompt from
    the same source, and the same status and reason, so that a segment's status holds for
    every frame of it."""
    return (
        int(a["end_frame"]) == int(b["start_frame"])
        and a.get("recaption") == b.get("recaption")
        and a.get("recaption_source") == b.get("recaption_source")
        and a.get("status") == b.get("status")
        and (a.get("reason") or None) == (b.get("reason") or None)
    )


def _segment(run: Sequence[Mapping[str, Any]], fps: float) -> dict:
    """One story segment from consecutive scenes that share it; its score is their
    ``recaption_score`` weighted by length."""
    first, last = run[0], run[-1]
    sf, ef = int(first["start_frame"]), int(last["end_frame"])
    known = [
        (float(r["recaption_score"]), int(r["end_frame"]) - int(r["start_frame"]))
        for r in run
        if r.get("recaption_score") is not None
    ]
    weight = sum(n for _, n in known)
    return {
        "start_s": sf / fps,
        "end_s": ef / fps,
        "start_frame": sf,
        "end_frame": ef,
        "prompt": first["recaption"],
        "clip_id": first["clip_id"],
        "score": float(sum(s * n for s, n in known) / weight) if known and weight else None,
        "status": first.get("status"),
        "reason": first.get("reason") or None,
        "prompt_source": first.get("recaption_source"),
    }


def with_clip_status(story: Mapping[str, Any], clips: Sequence[Mapping[str, Any]]) -> dict:
    """``story`` with every segment carrying the final status of its clips (``clips``: the
    video's clip rows after dedup). A segment whose scenes no longer share one status (dedup
    dropped one of them) is split at the scene boundary, so that a segment's status holds for
    all of its frames."""
    ordered = sorted(clips, key=lambda c: int(c["start_frame"]))
    segments: list[dict] = []
    for seg in story.get("segments") or ():
        inside = [
            c
            for c in ordered
            if seg.get("start_frame") is not None
            and seg.get("end_frame") is not None
            and int(c["start_frame"]) >= int(seg["start_frame"])
            and int(c["end_frame"]) <= int(seg["end_frame"])
            and c.get("recaption") == seg.get("prompt")
        ]
        if not inside:  # not built from these clips: left as it is
            segments.append(dict(seg))
            continue
        runs: list[list[Mapping[str, Any]]] = [[inside[0]]]
        for c in inside[1:]:
            if _same_segment(runs[-1][-1], c):
                runs[-1].append(c)
            else:
                runs.append([c])
        fps = float(story.get("fps") or inside[0]["fps"])
        segments += [_segment(run, fps) for run in runs]
    return {**story, "segments": segments}


def _caption_groups(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[int]]]:
    """Each usable source caption of a video's scenes (cleaned) with the indices of the scenes
    that carry it, in scene order. The scenes of a video share one caption unless timed
    captions gave them their own."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        caption = r.get("source_caption")
        if isinstance(caption, str):
            cleaned = clean_caption(caption)
            if cleaned.ok:
                groups.setdefault(cleaned.text, []).append(i)
    return list(groups.items())


def _rows_of(a: np.ndarray | None, index: Sequence[int]) -> np.ndarray | None:
    return None if a is None else a[list(index)]


def _goes_on(prompt: str, head: str) -> bool:
    """Whether ``prompt`` says ``head`` and then more, from a word boundary on."""
    rest = prompt[len(head) :]
    return (
        prompt.startswith(head)
        and bool(rest)
        and not rest[0].isalnum()
        and any(ch.isalnum() for ch in rest)
    )


def _finishes_word(prompt: str, head: str) -> bool:
    """Whether ``prompt`` says ``head`` with its last word finished ("... on a bei" →
    "... on a beige background"); a plural ending alone does not finish a word."""
    if not prompt.startswith(head) or len(prompt) <= len(head) or not prompt[len(head)].isalnum():
        return False
    tail = prompt_words(prompt[len(head) :])
    return not tail or tail[0] not in PLURAL_ENDINGS


# --- the step -------------------------------------------------------------------------------------


class Recaptioner(Step[Any, dict]):
    """Give every scene of a video a prompt and build the video's story (a stories row).

    ``process(clips)`` takes the scored, filtered clip records of one video (each with
    ``embedding``; ``frames`` too when a captioner is used, unless they carry the captioner's
    ``generated_caption`` already) and yields one dict::

        {"video_id": ..., "clips": [clip records with recaption fields], "story": stories row}

    Per scene, in order of preference:

    1. the fragment of its source caption aligned to it (monotonic alignment of fragments to
       scenes by CLIP similarity), when the clip's caption passed the filter and the
       similarity is at least ``align_threshold``. The scenes of a video share its caption,
       unless timed captions gave scenes captions of their own (see
       :class:`~curate.scenes.splitter.SceneSplitter`): each caption is then aligned over the
       scenes that carry it. A caption over one scene competes whole besides its fragments;
    2. otherwise (``fallback``) the best prompt of the prompt bank by CLIP image→text
       similarity, an image-to-text ``captioner``'s caption, or whichever of the two CLIP
       prefers (``"best"``); a bank or captioner prompt scoring under ``min_score`` is not
       used.

    With ``complete_truncated``, the prompt a caption cut short ends with (at the model's
    token limit, or mid-word) is completed by the best bank prompt that goes on from it word
    for word (see :meth:`_complete_end`); a caption that ends complete keeps its words. A scene left without a prompt stays out of the story (a gap). Consecutive scenes
    with the same prompt merge into one segment.

    Similarities are :func:`~curate.storyboard.scene_similarity`: the cosine with the scene's
    mean frame embedding, averaged with the cosine with its storyboard embedding
    (``scene_embedding``) when the scorer made one, so that prompts are also told apart by
    what happens over the scene (motion), which no single frame shows.
    """

    stage = "recaption"

    def __init__(
        self,
        *,
        model: str | os.PathLike[str] | None = None,
        scorer: Any | None = None,
        prompt_bank: Sequence[str] | str | os.PathLike[str] | None = None,
        captioner: str | os.PathLike[str] | None = None,
        fallback: str = "prompt_bank",
        align_threshold: float | None = None,
        min_score: float | None = None,
        merge: bool = True,
        complete_truncated: bool = True,
        device: str = "cpu",
    ) -> None:
        check_choice("fallback", fallback, FALLBACKS)
        if fallback in ("captioner", "best") and captioner is None:
            raise ValueError(f"fallback {fallback!r} needs a captioner model folder")
        for name, value in (("align_threshold", align_threshold), ("min_score", min_score)):
            if value is not None and not -1.0 <= value <= 1.0:
                raise ValueError(f"{name} is a cosine in [-1, 1], got {value!r}")
        self.model = model
        self.fallback = fallback
        self.align_threshold = align_threshold
        self.min_score = min_score
        self.merge = bool(merge)
        self.complete_truncated = bool(complete_truncated)
        self.device = device
        self._scorer: Any = scorer
        self._own_scorer = scorer is None
        self._bank_source = prompt_bank
        #: the prompts given at construction (a list, or a file's, once set up)
        self._given_prompts: list[str] = []
        self._bank: PromptBank | None = None
        self._captioner = Captioner(captioner, device=device) if captioner is not None else None

    # -- resources

    def setup(self) -> None:
        if self._scorer is None:
            self._scorer = ClipScorer(model=self.model or DEFAULT_MODEL, device=self.device)
        self._scorer.setup()
        if self._bank is None and self._bank_source is not None:
            self._given_prompts = (
                load_prompt_bank(self._bank_source)
                if isinstance(self._bank_source, (str, os.PathLike))
                else list(self._bank_source)
            )
            self.set_prompt_bank(self._given_prompts)
        if self._captioner is not None:
            # a bad folder fails now; the model itself loads when a scene first needs it (in a
            # pipeline the scenes usually come captioned already: ``generated_caption``)
            self._captioner.check_folder()

    def teardown(self) -> None:
        if self._own_scorer and self._scorer is not None:
            self._scorer.teardown()
            self._scorer = None

    def set_prompt_bank(self, prompts: Sequence[str]) -> None:
        """Use ``prompts`` (e.g. :func:`build_prompt_bank` of a first pass) as the bank."""
        if self._scorer is None:
            self.setup()
        prompts = list(dict.fromkeys(p for p in prompts if p and p.strip()))
        emb = self._scorer.embed_texts(prompts) if prompts else np.zeros((0, 1), np.float32)
        if not prompts:
            emb = np.zeros((0, self._scorer.embedding_dim), np.float32)
        self._bank = PromptBank(prompts, emb)
        logger.info("prompt bank: %d prompts", len(prompts))

    def use_corpus_bank(self, prompts: Sequence[str]) -> None:
        """Rank from the corpus' own ``prompts`` (:func:`build_prompt_bank` over every video)
        followed by the prompts this step was given. The corpus phase gathers them after the
        step is set up; only a bank that changed is embedded again."""
        if self._scorer is None:
            self.setup()
        merged = list(dict.fromkeys([*prompts, *self._given_prompts]))
        current = None if self._bank is None else self._bank.prompts
        if merged == current or (current is None and not merged):
            return
        self.set_prompt_bank(merged)

    # -- per video

    def recaption_video(self, clips: Sequence[Mapping[str, Any]]) -> tuple[list[dict], dict]:
        """The clips with ``recaption``, ``recaption_source``, ``recaption_score``; the story."""
        if self._scorer is None:
            self.setup()
        if not clips:
            raise ValueError("recaption_video needs at least one clip")
        rows = sorted((dict(c) for c in clips), key=lambda r: int(r["start_frame"]))
        vids = {r["video_id"] for r in rows}
        if len(vids) != 1:
            raise ValueError(f"recaption_video takes the clips of one video, got {sorted(vids)}")
        video_id = vids.pop()
        missing = [r.get("clip_id") for r in rows if r.get("embedding") is None]
        if missing:
            raise ValueError(f"{video_id}: clips {missing} have no embedding (score them first)")
        emb = np.stack([np.asarray(r["embedding"], np.float32) for r in rows])
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        # storyboard embeddings (what happens over a scene) where the scorer made them
        boards = [r.get("scene_embedding") for r in rows]
        scene = (
            np.stack([np.asarray(b, np.float32) for b in boards])
            if all(b is not None for b in boards)
            else None
        )

        for r in rows:
            r["recaption"] = r["recaption_source"] = r["recaption_score"] = None

        # 1. fragments of the source caption, aligned to scenes in order; scenes that timed
        # captions gave captions of their own are aligned to them, each caption over its scenes
        for caption, members in _caption_groups(rows):
            self._align(caption, [rows[i] for i in members], emb[members], _rows_of(scene, members))

        # 2. bank and/or captioner for the rest
        todo = [i for i, r in enumerate(rows) if r["recaption"] is None]
        if todo:
            self._fill(rows, todo, emb, scene)
        story = self._story(rows, video_id)
        return rows, story

    def _align(
        self, caption: str, rows: list[dict], emb: np.ndarray, scene: np.ndarray | None
    ) -> None:
        """Give ``rows`` (scenes sharing ``caption``, in order) the fragments of it that align
        to them. A caption over one scene competes whole too, so that a comma inside one event
        ("a red circle, moving left") costs the scene nothing."""
        text, truncated = self._scorer.truncate_caption(caption)
        fragments = split_caption(text) or [text]
        candidates = fragments + [text] if len(rows) == 1 and len(fragments) > 1 else fragments
        sims = scene_similarity(emb, scene, self._scorer.embed_texts(candidates))
        assignment = align_monotonic(sims)
        for r, f, s in zip(rows, assignment, sims[np.arange(len(rows)), assignment]):
            if not self._caption_usable(r):
                continue
            if self.align_threshold is not None and s < self.align_threshold:
                continue
            r["recaption"] = candidates[f]
            r["recaption_source"] = "source" if candidates[f] == text else "source_fragment"
            r["recaption_score"] = float(s)
        if self.complete_truncated:
            self._complete_end(rows, emb, scene, text, truncated, {fragments[-1], text})

    def _complete_end(
        self,
        rows: list[dict],
        emb: np.ndarray,
        scene: np.ndarray | None,
        text: str,
        truncated: bool,
        ends: set[str],
    ) -> None:
        """A caption cut short leaves the scenes given its end (``ends``: its last fragment,
        or all of it) an unfinished prompt. Cut short means cut at the model's token limit
        (``truncated``: a bank prompt that goes on from the prompt's last word completes it),
        or cut mid-word before it came here ("a red circle moving ri": its last word appears
        whole nowhere in the bank or the rest of the caption, while a bank prompt finishes
        that word, other than with a plural ending). A word cut is broken text: the
        best-scoring completion that finishes it replaces the prompt (a score bar there would
        be noise: CLIP scores a description cut short within 0.001 of the whole one on the
        shipped shapes-world model, either way). A prompt cut at the token limit on a whole
        word is a description already: the best completion replaces it only where it scores
        at least as well. A caption that ends complete is never replaced: the bank completes
        the source, it does not overrule it."""
        if self._bank is None or not len(self._bank):
            return
        whole = self._bank.whole_words()
        caption_words = prompt_words(text)
        for i, r in enumerate(rows):
            head = r.get("recaption")
            if head not in ends or r.get("recaption_source") not in ("source", "source_fragment"):
                continue
            low = normalize_caption(head).lower()
            words = prompt_words(low)
            cut_word = (
                bool(words)
                and low.endswith(words[-1])
                and words[-1] not in whole
                and caption_words.count(words[-1]) == 1
            )
            if not (cut_word or truncated):
                continue
            matches = [
                p
                for p in self._bank.prompts
                if (cut_word and _finishes_word(p.lower(), low))
                or (truncated and _goes_on(p.lower(), low))
            ]
            if not matches:
                continue
            sims = scene_similarity(
                emb[i : i + 1], _rows_of(scene, [i]), self._scorer.embed_texts(matches)
            )[0]
            j = int(np.argmax(sims))
            # a word cut is broken text: its best completion is taken. A prompt that ends on a
            # whole word is a description already: a completion must score at least as well
            if cut_word or float(sims[j]) >= float(r["recaption_score"]) - TIE:
                r["recaption"], r["recaption_source"] = matches[j], "prompt_bank"
                r["recaption_score"] = float(sims[j])

    @staticmethod
    def _caption_usable(r: Mapping[str, Any]) -> bool:
        # the filter's verdict on this scene's caption; drops for other reasons (duplicate,
        # too short) say nothing against the caption
        return not (r.get("status") == DROPPED and r.get("reason") in CAPTION_DROP_REASONS)

    def _fill(
        self, rows: list[dict], todo: list[int], emb: np.ndarray, scene: np.ndarray | None
    ) -> None:
        candidates: list[list[tuple[float, str, str]]] = [[] for _ in todo]
        if self.fallback in ("prompt_bank", "best") and self._bank is not None and len(self._bank):
            scores, idx = self._bank.search(emb[todo], 1, None if scene is None else scene[todo])
            for c, s, i in zip(candidates, scores[:, 0], idx[:, 0]):
                c.append((float(s), self._bank.prompts[int(i)], "prompt_bank"))
        if self.fallback in ("captioner", "best") and self._captioner is not None:
            need = [i for i in todo if not rows[i].get("generated_caption")]
            for i in need:
                f = rows[i].get("frames")
                if f is None or len(f) == 0:
                    raise ValueError(f"clip {rows[i].get('clip_id')!r} has no frames to caption")
            if need:
                made = self._captioner.caption_scenes([np.asarray(rows[i]["frames"]) for i in need])
                for i, text in zip(need, made):
                    rows[i]["generated_caption"] = text
            texts = [rows[i]["generated_caption"] for i in todo]
            usable = [t if t and clean_caption(t).ok else None for t in texts]
            known = [t for t in usable if t]
            temb = dict(zip(known, self._scorer.embed_texts(known))) if known else {}
            for c, i, t in zip(candidates, todo, usable):
                if t:
                    sim = scene_similarity(
                        emb[i : i + 1], None if scene is None else scene[i : i + 1], temb[t][None]
                    )
                    c.append((float(sim[0, 0]), t, "captioner"))
        for i, cands in zip(todo, candidates):
            if not cands:
                continue
            score, text, source = _best_candidate(cands)
            if self.min_score is not None and score < self.min_score:
                continue
            rows[i]["recaption"], rows[i]["recaption_source"] = text, source
            rows[i]["recaption_score"] = score

    def _story(self, rows: list[dict], video_id: str) -> dict:
        fps = float(rows[0]["fps"])
        num_frames = max(int(r["end_frame"]) for r in rows)
        runs: list[list[dict]] = []
        for r in rows:
            if not r.get("recaption"):
                continue
            prev = runs[-1][-1] if runs else None
            if self.merge and prev is not None and _same_segment(prev, r):
                runs[-1].append(r)
            else:
                runs.append([r])
        segments = [_segment(run, fps) for run in runs]
        story = {
            "story_id": video_id,
            "video_id": video_id,
            "uri": rows[0].get("uri"),
            "fps": fps,
            "duration_s": num_frames / fps,
            "num_frames": num_frames,
            "segments": segments,
        }
        if segments:
            validate_story(segments, duration_s=num_frames / fps, where=f"story {video_id!r}")
        return story

    def process(self, record: Any) -> Iterator[dict]:
        clips = [record] if isinstance(record, Mapping) else list(record)
        rows, story = self.recaption_video(clips)
        yield {"video_id": story["video_id"], "clips": rows, "story": story}

    def recaption_record(
        self,
        video: Mapping[str, Any],
        clips: Sequence[Mapping[str, Any]],
        extras: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[list[dict], dict | None]:
        """Re-caption the filtered clips of one committed video (``video``: its videos row):
        ``(clips, story)``, the story ``None`` when no scene got a prompt.

        The clips carry their extras (:func:`curate.work.joined_clips`), or ``extras`` gives
        them separately. The ones only re-captioning reads are left out of the returned clips;
        a clip without an ``embedding`` gets the mean of its frame embeddings.
        """
        if not clips:
            return [], None
        rows = joined_clips({"clips": clips, "clip_extras": extras})
        for row in rows:
            if row.get("embedding") is None and row.get("frame_embeddings") is not None:
                mean = np.asarray(row["frame_embeddings"], np.float32).mean(axis=0)
                row["embedding"] = (mean / max(float(np.linalg.norm(mean)), 1e-12)).tolist()
            row.setdefault("uri", video.get("uri"))
        out, story = self.recaption_video(rows)
        for row in out:
            for key in RECAPTION_INPUTS:
                row.pop(key, None)
        return out, (story if story["segments"] else None)


#: scores closer than this are a tie: CLIP's float noise (how frames were batched, e.g. by a
#: resumed run) must not decide between a bank prompt and a caption, often the same text
TIE = 1e-4
#: who wins a tie: the scene's own caption, then the bank
_SOURCE_ORDER = {"captioner": 0, "prompt_bank": 1}


def _best_candidate(cands: Sequence[tuple[float, str, str]]) -> tuple[float, str, str]:
    """The highest-scored ``(score, text, source)``; within :data:`TIE` of the best, the
    captioner's before the bank's, then the first text in sort order."""
    best = max(c[0] for c in cands)
    near = [c for c in cands if c[0] >= best - TIE]
    return min(near, key=lambda c: (_SOURCE_ORDER.get(c[2], 9), c[1]))
