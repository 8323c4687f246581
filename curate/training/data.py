"""Shapes-world training data: scenes rendered as the curate sampler reads them, with their facts.

Both trainers learn from the same rendering: random scenes of the shapes world, a few frames
each squashed to the model's input as the sampler reads frames, and (for storyboards) the four
frames the sampler would take tiled in time order. Facts are integer codes per :data:`SLOTS`,
so captions and targets are computed in bulk. The same seed gives the same data for any number
of worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from curate import shapes
from curate.sampling import plan_indices
from curate.storyboard import storyboard

#: the frame sizes a training frame is rendered at before it is squashed to the model's input,
#: covering the corpus' aspect ratios (16:9, 4:3, 71:40) at a tenth to a quarter of their size
TRAIN_RENDER_SIZES: tuple[tuple[int, int], ...] = ((142, 80), (128, 72), (96, 72), (160, 90))

#: random non-scene text used only as negatives, so that boilerplate scores low without
#: training on the corpus generator's own boilerplate sentences
FILLER_NEGATIVES = (
    "stock footage",
    "hd video",
    "4k background loop",
    "royalty free clip",
    "abstract animation",
    "beautiful sunset over the sea",
    "city street at night",
    "time lapse of clouds",
    "aerial view of a forest",
    "close up of a dog",
    "people walking in a park",
    "seamless loop motion graphics",
    "editorial use only",
    "slow motion water",
)


#: Unicode blocks of other scripts; random text from them trains the byte-level tokens a
#: caption in another language falls back to, which would otherwise keep their random
#: initial embeddings and match frames by chance
_SCRIPTS = (
    (0x4E00, 0x9FFF),  # CJK ideographs
    (0x3041, 0x3096),  # hiragana
    (0x30A1, 0x30FA),  # katakana
    (0xAC00, 0xD7A3),  # hangul
    (0x0410, 0x044F),  # cyrillic
    (0x0391, 0x03C9),  # greek
    (0x0627, 0x064A),  # arabic
    (0x05D0, 0x05EA),  # hebrew
    (0x0E01, 0x0E2E),  # thai
    (0x0905, 0x0939),  # devanagari
)


def random_script_text(rng: np.random.Generator) -> str:
    """A few random 'words' in one randomly chosen non-Latin script."""
    lo, hi = _SCRIPTS[int(rng.integers(len(_SCRIPTS)))]
    words = [
        "".join(chr(int(c)) for c in rng.integers(lo, hi + 1, size=int(rng.integers(1, 7))))
        for _ in range(int(rng.integers(1, 6)))
    ]
    sep = "" if lo >= 0x3000 and rng.random() < 0.5 else " "
    return sep.join(words)


def all_scene_texts() -> list[str]:
    """Every caption of the grammar plus multi-scene joins: the tokenizer's training text."""
    texts = shapes.all_captions()
    joins = [", then ", ", followed by ", "; ", ". Then ", " and then ", ". After that, "]
    texts += [
        texts[i] + joins[i % len(joins)] + texts[(i * 7 + 3) % len(texts)]
        for i in range(0, len(texts), 5)
    ]
    return texts + list(FILLER_NEGATIVES)


# --- facts as codes ----------------------------------------------------------------------------

#: the slots of a scene's facts, in the order of the integer codes below
SLOTS = ("color", "shape", "motion", "background")


def vocabularies() -> tuple[tuple[str, ...], ...]:
    return (tuple(shapes.COLORS), shapes.SHAPES, shapes.MOTIONS, tuple(shapes.BACKGROUNDS))


def facts_codes(facts: Any) -> tuple[int, int, int, int]:
    """``(colour, shape, motion, background)`` indices of scene facts."""
    return tuple(  # type: ignore[return-value]
        vocab.index(getattr(facts, slot)) for slot, vocab in zip(SLOTS, vocabularies())
    )


@dataclass
class TrainingData:
    """Rendered training images and the facts they show (integer codes per :data:`SLOTS`)."""

    frames: np.ndarray  # (N, S, S, 3) uint8: single frames
    frame_codes: np.ndarray  # (N, 4) int16
    boards: np.ndarray  # (M, S, S, 3) uint8: storyboards of the sampler's frames (M may be 0)
    board_codes: np.ndarray  # (M, 4) int16
    #: the sampler's frames of each storyboard, each squashed to S (only when asked for)
    board_frames: np.ndarray | None = None


def _render_chunk(job: tuple[int, int, int, int, int, bool, bool]) -> tuple[np.ndarray, ...]:
    """Render scenes ``[start, stop)`` of a run (a worker process's share)."""
    import cv2  # in the worker process that renders

    seed, start, stop, frames_per_scene, image_size, boards, keep_board_frames = job
    n_scenes = stop - start
    s = image_size
    frames = np.empty((n_scenes * frames_per_scene, s, s, 3), np.uint8)
    frame_codes = np.empty((n_scenes * frames_per_scene, 4), np.int16)
    n_boards = n_scenes if boards else 0
    board_imgs = np.empty((n_boards, s, s, 3), np.uint8)
    board_frames = np.empty((n_boards if keep_board_frames else 0, 4, s, s, 3), np.uint8)
    codes = np.empty((n_scenes, 4), np.int16)
    # the base sizes suit a 64-px model; keep about the same downscale for other inputs
    scale = image_size / 64
    for j in range(n_scenes):
        rng = np.random.default_rng([seed, 0xC11F, start + j])
        f = shapes.random_facts(rng)
        codes[j] = facts_codes(f)
        w, h = TRAIN_RENDER_SIZES[int(rng.integers(len(TRAIN_RENDER_SIZES)))]
        w, h = max(32, round(w * scale / 2) * 2), max(32, round(h * scale / 2) * 2)
        # the corpus' scenes are 40 frames or longer
        n = int(rng.integers(40, 121))
        renderer = shapes.SceneRenderer(
            f, num_frames=n, width=w, height=h, seed=int(rng.integers(2**31))
        )

        def squashed(t: int, renderer: Any = renderer) -> np.ndarray:
            return cv2.resize(renderer.frame(int(t)), (s, s), interpolation=cv2.INTER_AREA)

        for i, t in enumerate(rng.choice(n, size=frames_per_scene, replace=False)):
            frames[j * frames_per_scene + i] = squashed(int(t))
            frame_codes[j * frames_per_scene + i] = codes[j]
        if boards:
            # the frames the sampler would take (uniform, a few frames off each end, as a
            # scene found by the splitter may start or end a little off)
            a, b = sorted(rng.integers(0, 6, size=2))
            picked = np.stack(
                [squashed(t) for t in plan_indices(int(a), n - int(b), 4, strategy="uniform")]
            )
            board_imgs[j] = storyboard(picked, (s, s))
            if keep_board_frames:
                board_frames[j] = picked
    return frames, frame_codes, board_imgs, codes[:n_boards], board_frames


def render_training_data(
    n_scenes: int,
    *,
    seed: int,
    frames_per_scene: int,
    image_size: int,
    storyboards: bool = True,
    keep_board_frames: bool = False,
    workers: int = 1,
    chunk: int = 250,
    progress: bool = True,
) -> TrainingData:
    """Render ``n_scenes`` random scenes: ``frames_per_scene`` random frames each, squashed to
    ``image_size`` square as the sampler reads them, and (``storyboards``) one storyboard of the
    four frames the sampler would take. The same seed gives the same data for any ``workers``."""
    from tqdm import tqdm

    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk!r}")
    jobs = [
        (
            seed,
            a,
            min(a + chunk, n_scenes),
            frames_per_scene,
            image_size,
            storyboards,
            keep_board_frames,
        )
        for a in range(0, n_scenes, chunk)
    ]
    s, nb = image_size, n_scenes if storyboards else 0
    # filled chunk by chunk, so that memory peaks at the data's size, not twice that
    data = TrainingData(
        frames=np.empty((n_scenes * frames_per_scene, s, s, 3), np.uint8),
        frame_codes=np.empty((n_scenes * frames_per_scene, 4), np.int16),
        boards=np.empty((nb, s, s, 3), np.uint8),
        board_codes=np.empty((nb, 4), np.int16),
        board_frames=np.empty((nb, 4, s, s, 3), np.uint8) if keep_board_frames else None,
    )

    def store(job: tuple, part: tuple[np.ndarray, ...]) -> None:
        a, b = job[1], job[2]
        fa, fb = a * frames_per_scene, b * frames_per_scene
        data.frames[fa:fb], data.frame_codes[fa:fb] = part[0], part[1]
        if storyboards:
            data.boards[a:b], data.board_codes[a:b] = part[2], part[3]
        if data.board_frames is not None:
            data.board_frames[a:b] = part[4]
        bar.update(b - a)

    bar = tqdm(total=n_scenes, desc="render", unit="scene", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for job, part in zip(jobs, pool.imap(_render_chunk, jobs)):
                store(job, part)
    else:
        for job in jobs:
            store(job, _render_chunk(job))
    bar.close()
    return data


def caption_of_codes(codes: np.ndarray) -> list[str]:
    """The grammar's caption of each ``(colour, shape, motion, background)`` code row."""
    vocab = vocabularies()
    return [shapes.caption_for(*(vocab[k][int(c[k])] for k in range(len(SLOTS)))) for c in codes]


# --- captions as codes -------------------------------------------------------------------------


class CaptionSampler:
    """The captions of a training step as integer codes (see :data:`SLOTS`), drawn in bulk.

    Every caption of the grammar has an index (:meth:`index`), so its tokens are computed once
    for the whole run. A code of -1 is a wildcard: a truncated caption ("a red circle") says
    nothing of motion and background. Captions outside the grammar (fillers, other scripts) get
    -2 everywhere and match no image.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.vocab = vocabularies()
        self.sizes = np.array([len(v) for v in self.vocab])
        self._caption_for = shapes.caption_for
        motions = self.vocab[2]
        pairs = {"moving left": "moving right", "moving up": "moving down", "growing": "shrinking"}
        pairs |= {b: a for a, b in pairs.items()}
        self.opposite_motion = np.array([motions.index(pairs.get(m, m)) for m in motions])

    @property
    def n_captions(self) -> int:
        return int(np.prod(self.sizes))

    def index(self, codes: np.ndarray) -> np.ndarray:
        """Row of each full code in :meth:`all_captions`."""
        codes = np.asarray(codes, np.int64)
        out = codes[:, 0]
        for k in range(1, 4):
            out = out * self.sizes[k] + codes[:, k]
        return out

    def caption(self, code: Any) -> str:
        return self._caption_for(*(v[int(i)] for v, i in zip(self.vocab, code)))

    def all_captions(self) -> list[str]:
        """Every caption of the grammar, row :meth:`index` of each code."""
        return shapes.all_captions()

    def truncated(self, code: Any) -> str:
        """The caption of ``code`` cut at a random point after the shape word."""
        text = self.caption(code)
        shape = self.vocab[1][int(code[1])]
        cut = text.index(shape) + len(shape)
        return text[: int(self.rng.integers(cut, len(text)))]

    def negatives(self, codes: np.ndarray, n: int, *, board: bool) -> np.ndarray:
        """``(len(codes) * n, 4)`` codes that each change exactly one slot of a code: for a
        frame the shape first (the slot a frame shows least plainly), then colour or
        background; for a storyboard the opposite motion, another motion, then the shape."""
        codes = np.asarray(codes, np.int64)
        rows = []
        for j in range(n):
            if board and j == 0:
                # the opposite motion: the one that tells direction apart (left from right,
                # growing from shrinking) rather than axis, which a storyboard shows at once
                alt = codes.copy()
                alt[:, 2] = self.opposite_motion[codes[:, 2]]
                still = alt[:, 2] == codes[:, 2]
                size = self.sizes[2]
                shift = (self.rng.random(int(still.sum())) * (size - 1)).astype(np.int64) + 1
                alt[still, 2] = (codes[still, 2] + shift) % size
                rows.append(alt)
                continue
            if board:
                slot = np.full(len(codes), 2 if j < 2 else 1)
            elif j == 0:
                slot = np.full(len(codes), 1)
            else:
                slot = np.where(self.rng.random(len(codes)) < 0.5, 0, 3)
            alt = codes.copy()
            size = self.sizes[slot]
            shift = (self.rng.random(len(codes)) * (size - 1)).astype(np.int64) + 1
            r = np.arange(len(codes))
            alt[r, slot] = (codes[r, slot] + shift) % size
            rows.append(alt)
        return np.concatenate(rows) if rows else np.zeros((0, 4), np.int64)


def match_matrix(image_codes: Any, text_codes: Any) -> Any:
    """``(I, T)`` bool: text j describes image i (every slot equal, or a wildcard -1 on either
    side; -2 on the text side matches nothing). NumPy arrays or torch tensors."""
    img = image_codes[:, None, :]
    txt = text_codes[None, :, :]
    ok = (img == txt) | (txt == -1) | (img == -1)
    return ok.all(-1) & (txt != -2).all(-1)
