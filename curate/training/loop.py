"""The training skeleton both shapes-world trainers share.

A trainer supplies its settings (a :class:`TrainingSettings` subclass), a model and one
function from a batch of item indices to a loss; :func:`train_loop` does the rest: epochs of
shuffled batches, AdamW, a warm-up + cosine schedule that follows the clock under a time budget
(:class:`ClockCosineSchedule`), gradient clipping, a progress bar with the running loss.
:func:`training_command` is the command line both ``python -m curate.training.clip`` and
``python -m curate.training.captioner`` run: parse the shared flags, train (optionally from an
earlier folder), evaluate on held-out scenes, write the model card and the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from curate.models import CLIP_MEAN, CLIP_STD

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSettings:
    """What every shapes-world training run is determined by (written into the model card).

    Each trainer's settings subclass this and may change the defaults.
    """

    seed: int = 0
    scenes: int = 60000
    epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    image_size: int = 128
    patch_size: int = 16
    hidden: int = 128
    vision_layers: int = 6
    text_layers: int = 3
    heads: int = 4
    #: held-out scenes (a seed the training never sees) for the numbers in the model card
    eval_seed: int = 1_000_003
    eval_scenes: int = 1500
    threads: int = 2
    #: processes that render the training scenes
    workers: int = 1
    #: "cpu", "cuda", or "auto" (CUDA when available)
    device: str = "auto"
    #: stop after this many seconds of training (the learning-rate schedule follows the
    #: clock); ``None`` trains the full ``epochs``
    time_budget_s: float | None = 900.0
    #: a model folder to continue training from (``None``: from scratch)
    init: str | None = None

    #: the fields that must be positive whole numbers
    POSITIVE: ClassVar[tuple[str, ...]] = (
        "scenes",
        "epochs",
        "batch_size",
        "eval_scenes",
        "threads",
        "workers",
    )

    def __post_init__(self) -> None:
        for name in self.POSITIVE:
            value = getattr(self, name)
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s!r}")
        if self.eval_seed == self.seed:
            raise ValueError(f"eval_seed must differ from seed, got {self.eval_seed!r} for both")
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'cpu', 'cuda[:N]' or 'auto', got {self.device!r}")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device is CUDA but no CUDA device is available")
    return device


def start_run(
    settings: TrainingSettings, *, stream: int, tf32: bool = False
) -> tuple[str, np.random.Generator]:
    """The device of a run, with torch's threads and seed set; the run's numpy generator
    (``stream`` keeps each trainer's draws apart from another's with the same seed)."""
    import torch

    device = resolve_device(settings.device)
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    if tf32 and device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    return device, np.random.default_rng([settings.seed, stream])


def training_pixels(images: Any) -> Any:
    """``(b, h, w, c)`` uint8 images on the device → normalised ``(b, c, h, w)`` pixels, with
    the photometric jitter the decoder and resizer of real videos would add."""
    import torch
    from einops import rearrange

    x = rearrange(images.float(), "b h w c -> b c h w") / 255.0
    n, device = len(images), images.device
    x = x * (1 + 0.06 * torch.randn(n, 1, 1, 1, device=device)) + 0.02 * torch.randn_like(x)
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    return (x.clamp(0, 1) - mean) / std


def device_name(device: str) -> str:
    """What the report records of the device: ``cpu``, or the GPU's name."""
    import torch

    return device if device == "cpu" else torch.cuda.get_device_name(device)


class ClockCosineSchedule:
    """Linear warm-up, then cosine decay to zero over the run.

    With a time budget the decay follows the clock as well as the step count (whichever is
    further along), so a busy machine trains fewer steps but still anneals fully.
    """

    def __init__(self, optimizer: Any, lr: float, total_steps: int, time_budget_s: float | None):
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


@dataclass
class LoopResult:
    steps: int
    losses: list[float] = field(default_factory=list)


def train_loop(
    model: Any,
    step_loss: Callable[[np.ndarray], Any],
    *,
    settings: TrainingSettings,
    items: int,
    steps_per_epoch: int,
    rng: np.random.Generator,
    progress: bool = True,
) -> LoopResult:
    """Train ``model`` for ``settings.epochs`` epochs over ``items`` items, or until the time
    budget runs out; ``step_loss(indices)`` is the loss of one batch of item indices."""
    import torch
    from tqdm import tqdm

    s = settings
    total = steps_per_epoch * s.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    schedule = ClockCosineSchedule(opt, s.lr, total, s.time_budget_s)
    model.train()
    result = LoopResult(steps=0)
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress)
    for _epoch in range(s.epochs):
        if schedule.finished(result.steps):
            break
        order = rng.permutation(items)
        for step in range(steps_per_epoch):
            if schedule.finished(result.steps):
                break
            schedule.apply(result.steps)
            loss = step_loss(order[step * s.batch_size : (step + 1) * s.batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            result.steps += 1
            result.losses.append(float(loss.detach()))
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(result.losses[-20:]):.3f}")
    bar.close()
    return result


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


# --- the command line -----------------------------------------------------------------------


def add_training_args(p: argparse.ArgumentParser, d: TrainingSettings, *, item: str) -> None:
    """The flags every shapes-world training command shares; ``d`` holds their defaults and
    ``item`` names what a step batches ("frames", "storyboards")."""
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.add_argument("--seed", type=int, default=d.seed, help="training data and init seed")
    p.add_argument("--scenes", type=int, default=d.scenes, help="scenes rendered for training")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"passes over the {item}")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"{item} per step")
    p.add_argument(
        "--lr", type=float, default=d.lr, help="peak learning rate (warm-up, then cosine)"
    )
    p.add_argument("--image-size", type=int, default=d.image_size, help="input side in pixels")
    p.add_argument("--patch-size", type=int, default=d.patch_size, help="ViT patch side")
    p.add_argument("--hidden", type=int, default=d.hidden, help="width of the model")
    p.add_argument("--vision-layers", type=int, default=d.vision_layers)
    p.add_argument("--text-layers", type=int, default=d.text_layers)
    p.add_argument(
        "--device",
        default=d.device,
        help="cpu, cuda[:N] or auto (CUDA when available; default %(default)s)",
    )
    p.add_argument(
        "--workers", type=int, default=d.workers, help="processes rendering training scenes"
    )
    p.add_argument("--init", default=None, help="continue training from this model folder")
    p.add_argument(
        "--eval-seed",
        type=int,
        default=d.eval_seed,
        help="seed of the held-out evaluation scenes (must differ from --seed)",
    )
    p.add_argument("--eval-scenes", type=int, default=d.eval_scenes)
    p.add_argument(
        "--time-budget",
        dest="time_budget_s",
        type=float,
        default=d.time_budget_s,
        metavar="SECONDS",
        help="stop training after this long; the learning-rate schedule follows the "
        "clock, so a busy machine trains fewer steps but still anneals "
        "(default %(default)s; 0 trains all --epochs)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="torch CPU threads (1 on a machine shared with other jobs: OpenMP "
        "threads that wait for a busy core slow every step down)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def settings_from_args(cls: type[TrainingSettings], args: argparse.Namespace) -> Any:
    """``cls`` from the parsed flags: every field with a flag of its name (0 s: no budget)."""
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    values["time_budget_s"] = values.get("time_budget_s") or None
    return cls(**values)


@dataclass(frozen=True)
class Trainer:
    """One shapes-world model's training command: how to build, train and finish it."""

    parser: Callable[[], argparse.ArgumentParser]
    settings: Callable[[argparse.Namespace], TrainingSettings]
    train: Callable[..., dict[str, Any]]
    finish: Callable[[Path, dict[str, Any], Any], dict[str, Any]]
    #: width of the metric names in the printed summary; metrics that are not printed
    key_width: int = 30
    hidden_metrics: tuple[str, ...] = ()


def training_command(trainer: Trainer, argv: list[str] | None = None) -> int:
    """Parse flags, train, chain the report of the ``--init`` folder, evaluate, print."""
    args = trainer.parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = trainer.settings(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    report = trainer.train(args.out, settings, progress=not args.no_progress)
    earlier = Path(settings.init or "") / "training_report.json"
    if settings.init and earlier.is_file():
        report["continued_from"] = json.loads(earlier.read_text())
    metrics = trainer.finish(args.out, report, settings)
    logger.info("settings: %s", dataclasses.asdict(settings))
    print(
        f"saved {args.out} ({report['size_bytes'] / 1e6:.1f} MB, {report['parameters']:,} parameters)"
    )
    print(f"trained in {report['train_seconds']:.0f} s; total {time.perf_counter() - t0:.0f} s")
    w = trainer.key_width
    for k, v in metrics.items():
        if k not in trainer.hidden_metrics:
            print(f"  {k:{w}s} {v:.4f}" if isinstance(v, float) else f"  {k:{w}s} {v}")
    return 0


def write_report(out: Path, report: Mapping[str, Any], card: str) -> None:
    (out / "README.md").write_text(card)
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
