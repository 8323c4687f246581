"""Build, train and save small CLIP models.

The shipped shapes-world scorer (``models/shapes-clip``) is a real ``transformers.CLIPModel``
at toy size, trained here on frames rendered by :func:`curate.shapes.render_scene` and their
scene captions. The same builders make the tiny random CLIPs that tests load through the very
code path a real checkpoint takes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from einops import rearrange

logger = logging.getLogger(__name__)

#: CLIP's published image statistics; kept so any CLIP tooling reads the folder the same way
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_config(
    tokenizer: Any,
    *,
    image_size: int = 64,
    patch_size: int = 8,
    vision_hidden: int = 96,
    vision_layers: int = 3,
    text_hidden: int = 96,
    text_layers: int = 3,
    heads: int = 4,
    projection_dim: int = 64,
):
    """A ``CLIPConfig`` whose text side matches ``tokenizer`` (vocab and special ids)."""
    from transformers import CLIPConfig

    for name, value in (("image_size", image_size), ("patch_size", patch_size)):
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    if image_size % patch_size:
        raise ValueError(
            f"image_size {image_size!r} is not a multiple of patch_size {patch_size!r}"
        )
    for name, value in (("vision_hidden", vision_hidden), ("text_hidden", text_hidden)):
        if value % heads:
            raise ValueError(f"{name} {value!r} is not a multiple of heads {heads!r}")
    return CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=text_hidden,
            intermediate_size=4 * text_hidden,
            num_hidden_layers=text_layers,
            num_attention_heads=heads,
            max_position_embeddings=int(tokenizer.model_max_length),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=vision_hidden,
            intermediate_size=4 * vision_hidden,
            num_hidden_layers=vision_layers,
            num_attention_heads=heads,
        ),
        projection_dim=projection_dim,
    )


def preprocessor_config(image_size: int, *, squash: bool = True) -> dict[str, Any]:
    """The ``preprocessor_config.json`` of a CLIP that reads ``image_size`` square frames.

    ``squash`` resizes the whole frame to the square (no centre crop), so nothing near the
    left and right edges of a wide frame is lost; otherwise CLIP's shortest-edge + crop.
    """
    size = {"height": image_size, "width": image_size} if squash else {"shortest_edge": image_size}
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": size,
        "resample": 3,
        "do_center_crop": not squash,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "do_convert_rgb": True,
    }


def save_clip_folder(
    model: Any, tokenizer: Any, out: str | os.PathLike[str], *, squash: bool = True
) -> Path:
    """Write a complete CLIP folder: safetensors + config, tokenizer, preprocessor config."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    image_size = int(model.config.vision_config.image_size)
    (out / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(image_size, squash=squash), indent=2) + "\n"
    )
    return out


def make_tiny_clip(
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    layers: int = 1,
    projection_dim: int = 16,
    texts: list[str] | None = None,
    squash: bool = False,
) -> Path:
    """Save a randomly initialised toy CLIP folder (for tests and throughput runs)."""
    import torch
    from transformers import CLIPModel

    from .tokenizer import train_clip_tokenizer

    torch.manual_seed(seed)
    tokenizer = train_clip_tokenizer(texts or [], vocab_size=400)
    cfg = clip_config(
        tokenizer,
        image_size=image_size,
        patch_size=patch_size,
        vision_hidden=hidden,
        vision_layers=layers,
        text_hidden=hidden,
        text_layers=layers,
        heads=2,
        projection_dim=projection_dim,
    )
    return save_clip_folder(CLIPModel(cfg).eval(), tokenizer, out, squash=squash)


# --- training on shapes world -----------------------------------------------------------------

#: the frame sizes a training frame is rendered at before it is squashed to the model's input,
#: covering the corpus' aspect ratios (16:9, 4:3, 71:40) at a tenth to a quarter of their size
TRAIN_RENDER_SIZES: tuple[tuple[int, int], ...] = ((142, 80), (128, 72), (96, 72), (160, 90))

#: random non-scene text used only as negatives, so that boilerplate scores low without
#: training on the corpus generator's own boilerplate sentences
_FILLER_NEGATIVES = (
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


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a shapes-world CLIP run (written into the model card)."""

    seed: int = 0
    scenes: int = 80000
    frames_per_scene: int = 2
    #: also train on scene storyboards (sampled frames tiled in time order), so that the
    #: model reads motion from a scene; single frames still train caption scoring
    storyboards: bool = True
    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    image_size: int = 128
    patch_size: int = 16
    hidden: int = 128
    vision_layers: int = 6
    text_layers: int = 3
    heads: int = 4
    projection_dim: int = 128
    vocab_size: int = 1024
    eval_seed: int = 1_000_003
    eval_scenes: int = 1500
    threads: int = 2
    #: processes that render the training scenes
    workers: int = 1
    #: "cpu", "cuda", or "auto" (CUDA when available)
    device: str = "auto"
    hard_negatives: int = 2
    #: stop after this many seconds of training (the learning-rate schedule follows the
    #: clock); ``None`` trains the full ``epochs``
    time_budget_s: float | None = 1200.0
    #: a model folder to continue training from (``None``: from scratch)
    init: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "scenes",
            "frames_per_scene",
            "epochs",
            "batch_size",
            "eval_scenes",
            "threads",
            "workers",
        ):
            value = getattr(self, name)
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if not 0 <= self.hard_negatives <= 3:
            raise ValueError(f"hard_negatives must be in [0, 3], got {self.hard_negatives!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s!r}")
        if self.eval_seed == self.seed:
            raise ValueError(f"eval_seed must differ from seed, got {self.eval_seed!r} for both")
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'cpu', 'cuda[:N]' or 'auto', got {self.device!r}")


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
    from . import shapes

    texts = shapes.all_captions()
    joins = [", then ", ", followed by ", "; ", ". Then ", " and then ", ". After that, "]
    texts += [
        texts[i] + joins[i % len(joins)] + texts[(i * 7 + 3) % len(texts)]
        for i in range(0, len(texts), 5)
    ]
    return texts + list(_FILLER_NEGATIVES)


# --- training data ------------------------------------------------------------------------------

#: the slots of a scene's facts, in the order of the integer codes below
SLOTS = ("color", "shape", "motion", "background")


def _vocabularies() -> tuple[tuple[str, ...], ...]:
    from . import shapes

    return (tuple(shapes.COLORS), shapes.SHAPES, shapes.MOTIONS, tuple(shapes.BACKGROUNDS))


def facts_codes(facts: Any) -> tuple[int, int, int, int]:
    """``(colour, shape, motion, background)`` indices of scene facts."""
    return tuple(  # type: ignore[return-value]
        vocab.index(getattr(facts, slot)) for slot, vocab in zip(SLOTS, _vocabularies())
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
    import cv2

    from . import shapes
    from .sampling import plan_indices
    from .storyboard import storyboard

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


class CaptionSampler:
    """The captions of a training step as integer codes (see :data:`SLOTS`), drawn in bulk.

    Every caption of the grammar has an index (:meth:`index`), so its tokens are computed once
    for the whole run. A code of -1 is a wildcard: a truncated caption ("a red circle") says
    nothing of motion and background. Captions outside the grammar (fillers, other scripts) get
    -2 everywhere and match no image.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        from . import shapes

        self.rng = rng
        self.vocab = _vocabularies()
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
        from . import shapes

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


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device is CUDA but no CUDA device is available")
    return device


class ClockCosineSchedule:
    """Linear warm-up, then cosine decay to zero over the run.

    With a time budget the decay follows the clock as well as the step count (whichever is
    further along), so a busy machine trains fewer steps but still anneals fully.
    """

    def __init__(self, optimizer: Any, lr: float, total_steps: int, time_budget_s: float | None):
        import time

        self.optimizer = optimizer
        self.lr = lr
        self.total = max(1, total_steps)
        self.warmup = max(1, min(200, self.total // 20))
        self.time_budget_s = time_budget_s
        self._clock = time.perf_counter
        self._start = self._clock()

    def fraction(self, step_done: int) -> float:
        frac = step_done / self.total
        if self.time_budget_s:
            frac = max(frac, (self._clock() - self._start) / self.time_budget_s)
        return min(frac, 1.0)

    def finished(self, step_done: int) -> bool:
        return self.fraction(step_done) >= 1.0

    def apply(self, step_done: int) -> None:
        """Set the optimizer's learning rate for the step after ``step_done`` steps."""
        if step_done < self.warmup:
            lr = self.lr * (step_done + 1) / self.warmup
        else:
            lr = 0.5 * self.lr * (1 + math.cos(math.pi * self.fraction(step_done)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr


def train_shapes_clip(
    out: str | os.PathLike[str],
    settings: TrainSettings = TrainSettings(),
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the shapes-world CLIP, save it under ``out`` and return its training report."""
    import time

    import torch
    import torch.nn.functional as F
    from tqdm import tqdm
    from transformers import CLIPModel

    from .tokenizer import train_clip_tokenizer

    s = settings
    device = resolve_device(s.device)
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    rng = np.random.default_rng([s.seed, 0x7EA1])
    t0 = time.perf_counter()

    if s.init:
        # continue from a saved folder: its tokenizer and weights, a fresh schedule
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(s.init)
    else:
        tokenizer = train_clip_tokenizer(all_scene_texts(), vocab_size=s.vocab_size)
    data = render_training_data(
        s.scenes,
        seed=s.seed,
        frames_per_scene=s.frames_per_scene,
        image_size=s.image_size,
        storyboards=s.storyboards,
        workers=s.workers,
        progress=progress,
    )
    t_data = time.perf_counter() - t0
    cfg = clip_config(
        tokenizer,
        image_size=s.image_size,
        patch_size=s.patch_size,
        vision_hidden=s.hidden,
        vision_layers=s.vision_layers,
        text_hidden=s.hidden,
        text_layers=s.text_layers,
        heads=s.heads,
        projection_dim=s.projection_dim,
    )
    model: Any = CLIPModel.from_pretrained(s.init) if s.init else CLIPModel(cfg)
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    # the images stay uint8 on the device; each step gathers its batch there
    frames = torch.from_numpy(data.frames).to(device)
    boards = torch.from_numpy(data.boards).to(device)
    n_boards = len(data.boards)
    # a step takes batch_size frames and (with storyboards) batch_size storyboards
    b_boards = s.batch_size if n_boards else 0

    steps_per_epoch = len(data.frames) // s.batch_size
    total = steps_per_epoch * s.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    captions = CaptionSampler(rng)
    # every caption of the grammar, tokenised once
    table = tokenizer(
        captions.all_captions(), padding=True, truncation=True, max_length=77, return_tensors="pt"
    )
    table_ids, table_mask = table["input_ids"].to(device), table["attention_mask"].to(device)
    schedule = ClockCosineSchedule(opt, s.lr, total, s.time_budget_s)

    def pixels(images: Any, n: int) -> Any:
        x = rearrange(images.float(), "b h w c -> b c h w") / 255.0
        # photometric jitter the decoder and resizer of real videos would add
        x = x * (1 + 0.06 * torch.randn(n, 1, 1, 1, device=device)) + 0.02 * torch.randn_like(x)
        return (x.clamp(0, 1) - mean) / std

    model.train()
    losses: list[float] = []
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress)
    done = 0
    for _epoch in range(s.epochs):
        order = rng.permutation(len(data.frames))
        if schedule.finished(done):
            break
        for step in range(steps_per_epoch):
            if schedule.finished(done):
                break
            schedule.apply(done)
            idx = order[step * s.batch_size : (step + 1) * s.batch_size]
            bidx = rng.integers(n_boards, size=b_boards) if b_boards else np.zeros(0, int)
            images = frames[torch.from_numpy(idx).to(device)]
            img_codes = data.frame_codes[idx].astype(np.int64)
            img_codes[:, 2] = -1  # one frame cannot show motion
            if b_boards:
                images = torch.cat([images, boards[torch.from_numpy(bidx).to(device)]])
                img_codes = np.concatenate([img_codes, data.board_codes[bidx].astype(np.int64)])
            x = pixels(images, len(images))
            # texts: positives (10 % truncated), hard negatives, fillers
            pos_codes = np.concatenate([data.frame_codes[idx], data.board_codes[bidx]]).astype(
                np.int64
            )
            cut = rng.random(len(pos_codes)) < 0.1
            neg_codes = np.concatenate(
                [
                    captions.negatives(data.frame_codes[idx], s.hard_negatives, board=False),
                    captions.negatives(data.board_codes[bidx], s.hard_negatives, board=True),
                ]
            )
            full_codes = np.concatenate([pos_codes[~cut], neg_codes])
            free_texts = [captions.truncated(c) for c in pos_codes[cut]]
            free_codes = [(int(c[0]), int(c[1]), -1, -1) for c in pos_codes[cut]]
            free_texts += [
                _FILLER_NEGATIVES[int(j)] for j in rng.integers(len(_FILLER_NEGATIVES), size=8)
            ] + [random_script_text(rng) for _ in range(8)]
            free_codes += [(-2, -2, -2, -2)] * 16
            text_codes = np.concatenate([full_codes, np.array(free_codes, np.int64)])
            # positives in text order: the uncut ones lead the full block, the cut ones lead
            # the free block
            n_full_pos, n_cut = int((~cut).sum()), int(cut.sum())
            positives = np.concatenate([np.arange(n_full_pos), len(full_codes) + np.arange(n_cut)])
            rows, inverse = np.unique(captions.index(full_codes), return_inverse=True)
            rows_t = torch.from_numpy(rows).to(device)
            full_emb = _features(
                model.get_text_features(
                    input_ids=table_ids[rows_t], attention_mask=table_mask[rows_t]
                )
            )[torch.from_numpy(inverse.reshape(-1)).to(device)]
            enc = tokenizer(
                free_texts, padding=True, truncation=True, max_length=77, return_tensors="pt"
            ).to(device)
            free_emb = _features(
                model.get_text_features(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                )
            )
            img = F.normalize(_features(model.get_image_features(pixel_values=x)), dim=-1)
            txt = F.normalize(torch.cat([full_emb, free_emb]), dim=-1)
            scale = model.logit_scale.exp().clamp(max=100)
            logits = scale * img @ txt.T  # (I, T)
            # several images and captions of one batch can show the same facts: all of them
            # are positives (and a single frame matches its caption under every motion)
            match = match_matrix(
                torch.from_numpy(img_codes).to(device), torch.from_numpy(text_codes).to(device)
            ).float()
            loss_i = (
                -(F.log_softmax(logits, dim=1) * match / match.sum(1, keepdim=True)).sum(1).mean()
            )
            pos_t = torch.from_numpy(positives).to(device)
            pos_logits = logits[:, pos_t].T  # (positive texts, images)
            pmatch = match[:, pos_t].T
            loss_t = (
                -(F.log_softmax(pos_logits, dim=1) * pmatch / pmatch.sum(1, keepdim=True))
                .sum(1)
                .mean()
            )
            loss = (loss_i + loss_t) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            done += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bar.close()
    train_s = time.perf_counter() - t0
    model = model.to("cpu").eval()
    out = save_clip_folder(model, tokenizer, out)
    if s.storyboards:
        write_scoring(out, {"storyboard": {"grid": list(_storyboard_grid())}})
    report = {
        "settings": dataclasses.asdict(s),
        "device": device if device == "cpu" else torch.cuda.get_device_name(device),
        "parameters": n_params,
        "train_frames": int(len(data.frames)),
        "train_storyboards": int(n_boards),
        "board_negatives": (
            "storyboards: opposite motion, another motion, shape" if n_boards else "none"
        ),
        "steps": done,
        "images_seen": done * (s.batch_size + b_boards),
        "final_loss": float(np.mean(losses[-50:])),
        "data_seconds": round(t_data, 1),
        "train_seconds": round(train_s, 1),
        "size_bytes": sum(p.stat().st_size for p in out.iterdir() if p.is_file()),
    }
    return report


def _storyboard_grid() -> tuple[int, int]:
    from .storyboard import STORYBOARD_GRID

    return STORYBOARD_GRID


def write_scoring(folder: str | os.PathLike[str], values: dict[str, Any]) -> None:
    """Merge ``values`` into the folder's ``scoring.json`` (what the scorer reads of a model)."""
    from .models import SCORING_FILE

    path = Path(folder) / SCORING_FILE
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update(values)
    path.write_text(json.dumps(current, indent=2) + "\n")


def _features(out: Any):
    return out.pooler_output if hasattr(out, "pooler_output") else out


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties half."""
    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    values = np.concatenate([pos, neg])
    # average ranks (ties share the mean of their positions), 1-based
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def best_cut(positive: np.ndarray, negative: np.ndarray) -> float:
    """The score cut that best separates ``positive`` from ``negative`` (Youden's J: TPR - FPR
    of ``score >= cut``), in the middle of the range of equally good cuts, so that a score a
    little off the measured ones (another decoder, a re-encode) falls on the same side."""
    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    cuts = np.unique(np.concatenate([pos, neg]))
    j = np.array([(pos >= c).mean() - (neg >= c).mean() for c in cuts])
    best = np.flatnonzero(j == j.max())
    # the first run of best cuts: every c in (cuts[i0 - 1], cuts[i1]] is as good
    i0 = int(best[0])
    i1 = i0
    while i1 + 1 < len(cuts) and j[i1 + 1] == j.max():
        i1 += 1
    lo = cuts[i0 - 1] if i0 > 0 else cuts[i0] - 1e-3
    return float((lo + cuts[i1]) / 2)


def evaluate_shapes_clip(
    model: str | os.PathLike[str],
    *,
    seed: int,
    scenes: int = 1000,
    progress: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Held-out accuracy of a CLIP on shapes-world scenes rendered from ``seed``.

    Each scene is seen as the curate pipeline sees it: the four frames the sampler takes.

    - ``color_acc`` / ``shape_acc`` / ``background_acc`` / ``all_acc``: zero-shot
      classification of each frame against every caption of the grammar (the best caption
      over the seven motions of each colour, shape and background)
    - ``scene_*_acc``: the same per scene over all four slots, motion included, with the
      similarity re-captioning uses (:func:`curate.storyboard.scene_similarity`: the mean
      frame embedding, plus the storyboard where the model reads storyboards)
    - ``noise_auroc``: the true caption against a caption of other facts (another colour and
      shape, as a mismatched caption from another video is), per frame
    """
    from . import shapes
    from .clip_score import ClipScorer
    from .storyboard import scene_similarity

    rng = np.random.default_rng([seed, 0xE7A1])
    vocab = _vocabularies()
    with ClipScorer(model=model, batch_size=256, device=device) as scorer:
        h, w = scorer.input_size
        data = render_training_data(
            scenes,
            seed=seed,
            frames_per_scene=1,
            image_size=h,
            storyboards=True,
            keep_board_frames=True,
            progress=progress,
        )
        bf = data.board_frames
        assert bf is not None
        if (h, w) != bf.shape[2:4]:
            import cv2

            bf = np.stack(
                [[cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in fs] for fs in bf]
            )
        n = len(bf)
        frame_emb = scorer.embed_images(bf.reshape(-1, *bf.shape[2:])).reshape(n, 4, -1)
        scene = scorer.scene_embeddings(list(bf))
        combos = [
            (c, s, m, b)
            for c in range(len(vocab[0]))
            for s in range(len(vocab[1]))
            for m in range(len(vocab[2]))
            for b in range(len(vocab[3]))
        ]
        texts = [shapes.caption_for(*(v[i] for v, i in zip(vocab, cmb))) for cmb in combos]
        txt = scorer.embed_texts(texts)
        truth = data.board_codes.astype(int)
        # per frame: best caption, motion left out
        per_frame = frame_emb.reshape(n * 4, -1) @ txt.T
        pred_f = np.array(combos)[per_frame.argmax(1)]
        truth_f = np.repeat(truth, 4, axis=0)
        # per scene: all four slots
        mean = frame_emb.mean(1)
        mean /= np.linalg.norm(mean, axis=1, keepdims=True)
        sims = scene_similarity(mean, scene, txt)
        pred_s = np.array(combos)[sims.argmax(1)]
        captions = [shapes.caption_for(*(v[i] for v, i in zip(vocab, t))) for t in truth]
        mismatched = []
        for t in truth:
            while True:
                g = shapes.random_facts(rng)
                if (vocab[0].index(g.color), vocab[1].index(g.shape)) != (t[0], t[1]):
                    break
            mismatched.append(g.caption)
        flat = frame_emb.reshape(n * 4, -1)
        true_cos = np.einsum("nd,nd->n", flat, np.repeat(scorer.embed_texts(captions), 4, 0))
        wrong_cos = np.einsum("nd,nd->n", flat, np.repeat(scorer.embed_texts(mismatched), 4, 0))
        reads_boards = scorer.storyboard_grid is not None
    acc: dict[str, Any] = {}
    for k, name in ((0, "color"), (1, "shape"), (3, "background")):
        acc[f"{name}_acc"] = float(np.mean(pred_f[:, k] == truth_f[:, k]))
    visible = [0, 1, 3]
    acc["all_acc"] = float(np.mean((pred_f[:, visible] == truth_f[:, visible]).all(1)))
    for k, name in enumerate(SLOTS):
        acc[f"scene_{name}_acc"] = float(np.mean(pred_s[:, k] == truth[:, k]))
    acc["scene_all_acc"] = float(np.mean((pred_s == truth).all(1)))
    acc["noise_auroc"] = auroc(true_cos, wrong_cos)
    acc["recommended_threshold"] = best_cut(true_cos, wrong_cos)
    acc["true_caption_cos_min"] = float(true_cos.min())
    acc["mismatched_caption_cos_max"] = float(wrong_cos.max())
    acc["true_caption_cos_mean"] = float(true_cos.mean())
    acc["mismatched_caption_cos_mean"] = float(wrong_cos.mean())
    acc["frames"] = int(len(flat))
    acc["scenes"] = int(n)
    acc["storyboards"] = bool(reads_boards)
    return acc
