"""Train the shapes-world storygen model: a latent ``MaskedUNet3D`` on story windows.

One network serves every role of the plan (global, local, autoregressive: see
:mod:`storygen.training.windows`); the frame spacing of each window enters through the
spacing embedding. Frames are encoded by the model's own autoencoder (:mod:`.vae`), trained
first when the run starts from scratch. Objective: v-prediction on a cosine noise schedule,
min-SNR-5 loss weights (Hang et al. 2023), loss over the frames not given; given frames enter
as condition channels and, noised like the rest, in the sample, which is how the pipeline
feeds them. 10 % of windows drop their prompts, for classifier-free guidance. Weights saved
are an exponential moving average.

The text encoder is ``models/shapes-clip``'s text tower, fine-tuned at a lower rate
(``train_text``, ``text_lr``: its pooled state separates the grammar's facts, but its token
states, which the UNet attends to, barely tell backgrounds apart); without that folder a small
CLIP text model is trained along.

The model folder is written under a temporary name beside ``out`` and then takes its place
whole, with its ``training.json`` and a ``README.md`` model card: a run that stops or fails
before then (Ctrl-C, a full disk) leaves ``out`` as it was. Ctrl-C during the UNet's steps
stops the run as the end of its budget would, and saves what the steps so far averaged.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from storygen.training.folder import NOISE, SAMPLING, save_folder
from storygen.training.vae import VAES, build_vae, encode, expected_steps, train_vae
from storygen.training.windows import StoryWindows, collate, sample_window

logger = logging.getLogger(__name__)

#: windows of the held-out loss, and the seed they, their diffusion times and noise come from
#: (no training run draws from it)
HELDOUT_WINDOWS = 64
HELDOUT_SEED = 20_261_201
#: how the loss weighs diffusion times (on the v target; both in x0 terms below):
#: ``min-snr``: Min-SNR-5, the x0 error weighted by min(snr, 5): the noisiest times, where
#: layout and motion are decided, weigh almost nothing (snr 0.02 at t = 900);
#: ``v``: the plain v error, the x0 error weighted by 1 + snr (at least 1 at every time, and
#: hundreds at the cleanest times);
#: ``min-snr-floor``: the x0 error weighted by snr clamped to [1, 5]: Min-SNR-5 at the clean
#: end, and the noisiest times weigh as much as any time of snr 1 (the plain v error there)
LOSS_WEIGHTS = ("min-snr", "v", "min-snr-floor")
#: ``high_noise``: the noisiest times a window may be drawn at instead of uniformly (the last
#: fifth of the schedule: the input holds next to nothing of the video, so the prompt alone
#: decides where the shape stands; uniform draws put one window in five there)
HIGH_NOISE_FROM = 800

#: the UNet of the shipped model: 12 M parameters, attention at 8×8 and 4×4 latents
SHAPES_UNET: dict[str, Any] = {
    "block_out_channels": (64, 128, 128),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D"),
    "up_block_types": ("CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"),
    "attention_head_dim": 32,
    "norm_num_groups": 32,
}
#: a UNet small enough to train for a few steps on a CPU (tests)
MICRO_UNET: dict[str, Any] = {
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock3D", "CrossAttnDownBlock3D"),
    "up_block_types": ("CrossAttnUpBlock3D", "UpBlock3D"),
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
UNETS = {"shapes": SHAPES_UNET, "micro": MICRO_UNET}
SPACING_DIM = 32
#: the shipped CLIP, whose text tower a run from scratch starts from (``text_encoder`` unset),
#: beside the packages in the repository whatever the working directory
SHIPPED_TEXT_ENCODER = Path(__file__).resolve().parents[2] / "models" / "shapes-clip"
#: the first line of the model card a run writes (``README.md``); a card without it (written by
#: hand) is kept when a run rewrites its folder in place (``--out X --init X``)
CARD_MARK = (
    "<!-- written by storygen train, which rewrites this card with the folder; "
    "delete this line to keep your own text -->"
)


class RunRefused(ValueError):
    """A run refused before it trains: a setting out of range, or an input or output folder
    that cannot serve (``storygen train`` prints the message, exit code 2)."""


@dataclass
class TrainConfig:
    out: str
    #: continue from a model folder this trainer wrote (its UNet, autoencoder, text encoder);
    #: its autoencoder stays, so ``size`` must be the size it was made for
    init: str | None = None
    steps: int = 20000
    max_minutes: float | None = None
    batch_size: int = 64
    frames: int = 16
    size: int = 64
    lr: float = 2e-4
    ema: float = 0.999
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    #: CLIP folder whose text tower is used; None: the shipped one (:data:`SHIPPED_TEXT_ENCODER`),
    #: or, where it is missing, a new small one trained along; "": a new one
    text_encoder: str | None = None
    #: network sizes: "shapes" (the shipped model) or "micro" (tests, CPU smoke runs)
    preset: str = "shapes"
    #: fine-tune the text encoder too (at ``text_lr``): the CLIP tower's token states barely
    #: tell backgrounds apart (cosine 0.999 between "navy" and "brown"), its EOS state does
    train_text: int = 1
    text_lr: float = 5e-5
    #: peak learning rate of the per-frame conditioning (segment progress, prompt and
    #: progress, frame positions), which starts at zero when ``--init`` adds it; None: ``lr``
    frame_lr: float | None = None
    #: autoencoder training, when the run starts from scratch: with ``--init`` or ``--vae``
    #: the run keeps that autoencoder, frozen (the UNet's latents are its), and these are unused
    vae_steps: int = 4000
    vae_minutes: float | None = None
    eval_stories: int = 32
    log_every: int = 100
    #: train from the shards of a `curate export` folder instead of the shapes renderer
    shards: str | None = None
    #: start from this autoencoder (a model folder with vae/, or the vae folder itself),
    #: frozen, instead of training one: runs that differ only in data share it (not with
    #: ``init``, which keeps its folder's)
    vae: str | None = None
    #: 1: ``torch.compile`` the UNet for training (static shapes, one graph per call length,
    #: graphs in storyloom's Inductor cache): for GPU runs, where a step of this small network
    #: is bound by kernel launches
    compile: int = 0
    #: windows of the held-out loss recorded at the run's start and end (0: none)
    heldout_windows: int = HELDOUT_WINDOWS
    #: how the loss weighs diffusion times (:data:`LOSS_WEIGHTS`); the held-out loss always
    #: reads ``min-snr``, so runs stay comparable
    loss_weight: str = "min-snr"
    #: share of windows drawn at the noisiest times (t >= :data:`HIGH_NOISE_FROM`) instead of
    #: uniformly over all of them; 0: uniform (the held-out loss always draws uniformly)
    high_noise: float = 0.0
    #: the first of the noisiest times ``high_noise`` draws from (to the last, 999): 800 is the
    #: last fifth; 990 is where the input holds nothing a network can read (snr under 2e-4),
    #: so the prompt alone must say what the mean video is
    high_noise_from: int = HIGH_NOISE_FROM
    #: 1: the temporal attention knows each frame's index in its call (new models are built
    #: with it, ``--init`` adds it at zero); 0: as diffusers' 3D UNet, no position
    frame_positions: int = 1
    #: 1: two input channels hold each latent pixel's x and y (new models are built with
    #: them, ``--init`` adds them at zero); 0: none, as diffusers' 3D UNet
    coordinates: int = 1
    #: 1: train the plain text-to-video backbone of the training-free mode: every window a
    #: global one (nothing known), the network given no spacing (1 throughout), segment
    #: progress, frame positions or coordinates, so :func:`~storygen.training.folder.
    #: to_t2v_folder` exports exactly what was trained as a stock ``UNet3DConditionModel``
    text_to_video: int = 0
    #: loss weight of a frame next to a given one (the frames a call must join to its
    #: keyframes, where seams show), against 1 for the others; 1: all frames alike
    boundary_weight: float = 1.0

    def __post_init__(self) -> None:
        # each message opens with the field's name: the command line shows it as the flag
        if self.loss_weight not in LOSS_WEIGHTS:
            raise RunRefused(f"loss_weight must be one of {LOSS_WEIGHTS}, got {self.loss_weight!r}")
        if not 1.0 <= self.boundary_weight < math.inf:  # also refuses nan
            raise RunRefused(
                f"boundary_weight must be >= 1 and finite, got {self.boundary_weight!r}"
            )
        if not 0.0 <= self.high_noise <= 1.0:
            raise RunRefused(f"high_noise must be a share in [0, 1], got {self.high_noise!r}")
        if isinstance(self.high_noise_from, bool) or not 0 <= self.high_noise_from <= 999:
            raise RunRefused(
                f"high_noise_from must be a diffusion time in [0, 999], got {self.high_noise_from!r}"
            )
        for name in ("steps", "batch_size", "frames", "size", "log_every", "vae_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RunRefused(f"{name} must be a positive integer, got {value!r}")
        for name in ("workers", "eval_stories", "heldout_windows", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RunRefused(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("train_text", "compile", "frame_positions", "coordinates", "text_to_video"):
            if getattr(self, name) not in (0, 1):
                raise RunRefused(f"{name} must be 0 or 1, got {getattr(self, name)!r}")
        from storygen.plan.limits import FRAMES_PER_CALL_RANGE

        lo, hi = FRAMES_PER_CALL_RANGE  # the folder's sampling.json recommends this call length
        if not lo <= self.frames <= hi:
            raise RunRefused(f"frames must be from {lo} to {hi}, got {self.frames!r}")
        if self.size < 32 or self.size % 8:
            raise RunRefused(f"size must be a multiple of 8, >= 32, got {self.size!r}")
        if not 0 <= self.ema < 1:
            raise RunRefused(f"ema must lie in [0, 1), got {self.ema!r}")
        for name in ("lr", "text_lr", "frame_lr"):
            value = getattr(self, name)
            if name == "frame_lr" and value is None:
                continue
            if not 0 < value < math.inf:  # the other rates are shares of lr: 0 cannot be one
                tail = " (or unset: --lr)" if name == "frame_lr" else ""
                raise RunRefused(f"{name} must be a positive, finite rate{tail}, got {value!r}")
        for name in ("max_minutes", "vae_minutes"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise RunRefused(
                    f"{name} must be a positive, finite number of minutes (or unset: no time "
                    f"budget), got {value!r}"
                )
        if self.preset not in UNETS:
            raise RunRefused(f"preset must be one of {sorted(UNETS)}, got {self.preset!r}")


def is_framewise(name: str) -> bool:
    """Whether a UNet parameter belongs to the per-frame conditioning (``--frame-lr``)."""
    return name.startswith(("progress_proj.", "prompt_progress.")) or ".pos_embed." in name


def time_weight(snr: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample weight of the squared v error at signal-to-noise ratio ``snr``
    (:data:`LOSS_WEIGHTS`); the x0 error's weight is this times ``1 + snr``."""
    if kind == "min-snr":
        return snr.clamp(max=5.0) / (snr + 1)
    if kind == "v":
        return torch.ones_like(snr)
    if kind == "min-snr-floor":
        return snr.clamp(min=1.0, max=5.0) / (snr + 1)
    raise ValueError(f"loss weight must be one of {LOSS_WEIGHTS}, got {kind!r}")


def _quiet_worker(_: int) -> None:
    """One thread per data worker: many workers with a thread pool each oversubscribe the CPU."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def build_unet(
    cross_attention_dim: int,
    size: int,
    seed: int = 0,
    preset: str = "shapes",
    frame_positions: bool = True,
    coordinates: bool = True,
    progress: bool = True,
) -> Any:
    from storygen.models import MaskedUNet3D

    torch.manual_seed(seed)
    vae = VAES[preset]
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    return MaskedUNet3D(
        sample_channels=vae["latent_channels"],
        sample_size=size // scale,
        cross_attention_dim=cross_attention_dim,
        time_cond_proj_dim=SPACING_DIM,
        progress_embedding=progress,
        prompt_progress_embedding=progress,
        frame_position_embedding=frame_positions,
        coordinate_channels=coordinates,
        **UNETS[preset],
    )


def text_encoder_folder(config: TrainConfig) -> Path | None:
    """The CLIP folder whose text tower a run from scratch starts from, or None for a new one:
    ``text_encoder`` as given (refused where it is no CLIP folder), else the shipped one where
    it exists (a warning says where it looked when it does not)."""
    if config.text_encoder == "":
        return None
    if config.text_encoder is None:
        if (SHIPPED_TEXT_ENCODER / "config.json").is_file():
            return SHIPPED_TEXT_ENCODER
        logger.warning(
            "text encoder: no CLIP folder at %s (the shipped models/shapes-clip): a new small one "
            "is trained along (--text-encoder FOLDER to use another)",
            SHIPPED_TEXT_ENCODER,
        )
        return None
    path = Path(config.text_encoder)
    if not path.is_dir():
        raise RunRefused(
            f"--text-encoder {path}: no such folder (a CLIP model folder, as models/shapes-clip)"
        )
    if not (path / "config.json").is_file():
        raise RunRefused(f"--text-encoder {path}: no config.json there: not a CLIP model folder")
    return path


def load_text(config: TrainConfig) -> tuple[Any, Any, bool]:
    """(tokenizer, text_encoder, trainable): the text tower of :func:`text_encoder_folder`'s
    CLIP, else a new one."""
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    from curate.shapes import all_captions
    from curate.training.tokenizer import train_clip_tokenizer
    from storygen.presets import build_tiny_text_encoder

    path = text_encoder_folder(config)
    if path is not None:
        # the folder holds a whole CLIPModel: its vision tower is left out on purpose
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
        try:
            tokenizer = CLIPTokenizer.from_pretrained(str(path))
            encoder = CLIPTextModel.from_pretrained(str(path)).eval()
        except (OSError, ValueError) as exc:
            raise RunRefused(
                f"--text-encoder {path}: cannot load it ({_first_line(exc)})"
            ) from None
        finally:
            transformers_logging.set_verbosity(verbosity)
        logger.info("text encoder: %s", path)
        return tokenizer, encoder, False
    tokenizer = train_clip_tokenizer(all_captions(), vocab_size=600)
    encoder = build_tiny_text_encoder(
        tokenizer, hidden_size=64, num_layers=2, num_heads=4, seed=config.seed
    )
    logger.info("text encoder: a new 64-wide CLIP text model, trained along")
    return tokenizer, encoder, True


def _first_line(exc: BaseException) -> str:
    """An error's first line (a library's message may run on over several)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def resolve_device(name: str) -> torch.device:
    """The device ``--device`` names (``auto``: CUDA where there is one, else the CPU); refused
    where there is no such device here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise RunRefused(
            f"--device {name}: not a device name; storygen trains on cpu, cuda, cuda:N or auto"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise RunRefused(f"--device {name}: storygen trains on cpu, cuda, cuda:N or auto")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RunRefused(f"--device {name}: no CUDA device is available here")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise RunRefused(
                f"--device {name}: there is no {device}; this machine has {count} CUDA "
                f"device{'s' if count != 1 else ''}"
            )
    return device


class TokenCache:
    """Token ids of each prompt seen, tokenized once: the shapes grammar has a few thousand
    prompts, and the Python CLIP tokenizer costs a millisecond or more per prompt, every step."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        new = [p for p in prompts if p not in self.ids]
        if new:
            ids = self.tokenizer(
                new,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            self.ids.update(zip(new, ids, strict=True))
        return torch.stack([self.ids[p] for p in prompts])


def _encode_prompts(
    tokenizer: Any, text_encoder: Any, prompts: list[list[str]], device: torch.device
) -> torch.Tensor:
    """Per-frame prompt embeddings (B, F, S, D), each distinct prompt encoded once.

    ``tokenizer`` is a tokenizer or a :class:`TokenCache`."""
    flat = [p for clip in prompts for p in clip]
    uniq = sorted(set(flat))
    if isinstance(tokenizer, TokenCache):
        ids = tokenizer(uniq).to(device, non_blocking=True)
    else:
        ids = tokenizer(
            uniq,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
    table = text_encoder(ids).last_hidden_state
    where = {p: i for i, p in enumerate(uniq)}
    index = torch.tensor([where[p] for p in flat], device=device)
    return table[index].reshape(len(prompts), len(prompts[0]), *table.shape[1:])


@dataclass
class _Models:
    """What a run starts from: a folder this trainer wrote (``--init``), or new models with a
    freshly trained autoencoder."""

    tokenizer: Any
    text_encoder: Any
    text_trainable: bool
    unet: Any
    vae: Any
    #: the folder's training report (``--init``), else empty
    previous: dict[str, Any]
    vae_run: Any = None


#: what a model folder ``--init`` continues must hold (and ``vae/``, checked on its own: a
#: pixel-space folder of ``storygen new-model`` has none)
INIT_LAYOUT = ("model_index.json", "unet/config.json", "text_encoder/config.json", "tokenizer")


def check_init(config: TrainConfig) -> dict[str, Any]:
    """Check the ``--init`` folder's layout before anything loads; returns its training report
    (``training.json``), or an empty one for a folder no run wrote (``storygen new-model``)."""
    init = Path(str(config.init))
    flag = f"--init {config.init}"
    if config.vae:
        raise RunRefused(
            f"--vae {config.vae} with {flag}: a continued run keeps the autoencoder of the folder "
            "it continues (its UNet was trained on that one's latents); leave --vae out"
        )
    if not init.is_dir():
        what = "is not a folder" if init.exists() else "no such folder"
        raise RunRefused(f"{flag}: {what} (a model folder storygen train or new-model wrote)")
    missing = [part for part in INIT_LAYOUT if not (init / part).exists()]
    if missing:
        raise RunRefused(
            f"{flag}: not a storygen model folder (no {', '.join(missing)}); --init takes a "
            "folder storygen train or storygen new-model wrote"
        )
    try:
        unet_class = json.loads((init / "model_index.json").read_text())["unet"][1]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise RunRefused(f"{flag}: model_index.json names no UNet ({_first_line(exc)})") from None
    if unet_class != "MaskedUNet3D":
        raise RunRefused(
            f"{flag}: its UNet is a {unet_class} (the text-to-video layout); storygen train "
            "continues a MaskedUNet3D folder (storygen new-model --mode masked, or a run's)"
        )
    if not (init / "vae" / "config.json").is_file():
        raise RunRefused(
            f"{flag}: no autoencoder (vae/): a pixel-space model (new-model --preset micro or "
            "tiny) cannot be trained here; start from one with a VAE (--preset micro-latent or "
            "tiny-latent) or train from scratch"
        )
    record = init / "training.json"
    if not record.exists():
        logger.info("%s: no training.json (a new model): its record starts with this run", init)
        return {}
    try:
        previous = json.loads(record.read_text())
    except (OSError, ValueError) as exc:
        raise RunRefused(f"{flag}: cannot read its training.json ({_first_line(exc)})") from None
    if not isinstance(previous, dict):
        raise RunRefused(f"{flag}: its training.json is not a training report (not an object)")
    return previous


def _start(
    config: TrainConfig, device: torch.device, previous: dict[str, Any] | None = None
) -> _Models:
    """Load the ``--init`` folder (``previous``: its training report, read and the folder
    checked by :func:`check_init` when not given), or build new models (and train the
    autoencoder)."""
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    from storygen.models import MaskedUNet3D

    if config.init:
        init = Path(config.init)
        if previous is None:
            previous = check_init(config)
        logger.info("continuing from %s (%s steps done)", init, previous.get("steps_done", 0))
        vae = load_vae(str(init), config.size, flag="--init")
        if config.vae_steps != TrainConfig.vae_steps or config.vae_minutes is not None:
            logger.warning("--vae-steps / --vae-minutes unused: --init keeps its autoencoder")
        if config.text_encoder:
            logger.warning("--text-encoder unused: --init keeps its text encoder")
        part = "tokenizer"
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
        try:
            tokenizer = CLIPTokenizer.from_pretrained(str(init / "tokenizer"))
            part = "text_encoder"
            text_encoder = CLIPTextModel.from_pretrained(str(init / "text_encoder"))
            part = "unet"
            unet = MaskedUNet3D.from_pretrained(str(init / "unet"), torch_dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as exc:
            raise RunRefused(
                f"--init {init}: cannot load its {part}/ ({_first_line(exc)})"
            ) from None
        finally:
            transformers_logging.set_verbosity(verbosity)
        return _Models(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            text_trainable=bool(config.train_text),
            unet=_continued(unet, config),
            vae=vae,
            previous=previous,
        )
    tokenizer, text_encoder, text_trainable = load_text(config)
    if config.vae:
        vae, vae_run = load_vae(config.vae, config.size), None
        if config.vae_steps != TrainConfig.vae_steps or config.vae_minutes is not None:
            logger.warning("--vae-steps / --vae-minutes unused: --vae keeps its autoencoder")
    else:
        vae = build_vae(config.size, config.seed, config.preset)
        vae_run = train_vae(
            vae,
            size=config.size,
            device=device,
            max_steps=config.vae_steps,
            max_minutes=config.vae_minutes,
            workers=config.workers,
            seed=config.seed,
        )
    return _Models(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        text_trainable=text_trainable or bool(config.train_text),
        unet=build_unet(
            text_encoder.config.hidden_size,
            config.size,
            config.seed,
            config.preset,
            frame_positions=bool(config.frame_positions) and not config.text_to_video,
            coordinates=bool(config.coordinates) and not config.text_to_video,
            progress=not config.text_to_video,
        ),
        vae=vae,
        previous={},
        vae_run=vae_run,
    )


def _continued(unet: Any, config: TrainConfig) -> Any:
    """The ``--init`` UNet as the run trains it: grown with the per-frame inputs it lacks, or,
    for a text-to-video run, as it is, which must then have none of them."""
    if config.text_to_video:
        from storygen.models import PER_FRAME_INPUTS

        extra = [k for k in PER_FRAME_INPUTS if unet.config.get(k, False)]
        if extra:
            raise RunRefused(
                f"--text-to-video 1 --init {config.init}: its UNet has per-frame inputs a plain "
                f"text-to-video UNet cannot hold ({', '.join(extra)}); continue a model "
                "without them (one trained with --text-to-video 1, or one from before them)"
            )
        return unet
    return _grown(
        unet, frame_positions=bool(config.frame_positions), coordinates=bool(config.coordinates)
    )


def _grown(unet: Any, *, frame_positions: bool, coordinates: bool = False) -> Any:
    """A continued UNet gains the progress embeddings it lacks, the frame-position one with
    ``frame_positions`` and the coordinate channels with ``coordinates`` (all zero weights
    where they join: the same outputs at the start)."""
    from storygen.models import (
        add_coordinate_channels,
        add_frame_position_embedding,
        add_prompt_progress_embedding,
    )

    if not unet.config.get("progress_embedding", False):
        logger.info("adding the segment-progress embedding (zero weights: same outputs)")
    if not unet.config.get("prompt_progress_embedding", False):
        logger.info("adding the prompt-and-progress embedding (zero output: same outputs)")
    unet = add_prompt_progress_embedding(unet)
    if frame_positions and not unet.config.get("frame_position_embedding", False):
        logger.info("adding frame positions to the temporal attention (zero: same outputs)")
        unet = add_frame_position_embedding(unet)
    if coordinates and not unet.config.get("coordinate_channels", False):
        logger.info("adding the coordinate input channels (zero weights: same outputs)")
        unet = add_coordinate_channels(unet)
    return unet


def load_vae(path: str, size: int, *, flag: str = "--vae") -> Any:
    """The autoencoder of a model folder (its ``vae/``) or of a ``vae`` folder itself; a clear
    error when there is none or when it was made for another frame size (``flag``: the option
    that named the folder, for the messages)."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    folder = Path(path)
    if (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise RunRefused(
            f"{flag} {path}: no autoencoder there (neither vae/config.json nor config.json)"
        )
    try:
        vae = AutoencoderKL.from_pretrained(str(folder), torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as exc:
        raise RunRefused(
            f"{flag} {path}: cannot load its autoencoder ({_first_line(exc)})"
        ) from None
    if int(vae.config.sample_size) != size:
        raise RunRefused(
            f"{flag} {path}: an autoencoder for {vae.config.sample_size} px frames, "
            f"the run is for {size} px (--size {vae.config.sample_size})"
        )
    logger.info("autoencoder: %s (frozen, not trained)", folder)
    return vae


def _data_fps(config: TrainConfig) -> float:
    """The frame rate of the training windows: the export's (``--shards``), else the shapes
    renderer's; the model folder records it."""
    if config.shards:
        from storygen.training.shards import export_fps

        try:
            return export_fps(config.shards)
        except (OSError, ValueError) as exc:
            raise RunRefused(f"--shards {_first_line(exc)}") from None
    return float(SAMPLING["fps"])


def _loader(config: TrainConfig, device: torch.device, seed: int) -> Any:
    """Endless batches of windows: the shapes renderer's, or a ``curate export``'s shards."""
    windows: torch.utils.data.IterableDataset
    if config.shards:
        from storygen.training.shards import ShardWindows

        try:  # the export is read and checked here, before anything trains
            windows = ShardWindows(
                config.shards,
                batch_size=config.batch_size,
                frames=config.frames,
                size=config.size,
                seed=seed,
            )
        except (OSError, ValueError) as exc:
            raise RunRefused(f"--shards {_first_line(exc)}") from None
    else:
        windows = StoryWindows(
            batch_size=config.batch_size,
            frames=config.frames,
            size=config.size,
            seed=seed,
            role="global" if config.text_to_video else None,
        )
    return torch.utils.data.DataLoader(
        windows,
        batch_size=None,
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        # a forked copy of a process running threads (torch, decoders) can deadlock
        multiprocessing_context="forkserver" if config.workers > 0 else None,
        prefetch_factor=4 if config.workers > 0 else None,
        pin_memory=device.type == "cuda",
        worker_init_fn=_quiet_worker,
    )


class _Trainer:
    """One optimizer step on a batch of windows: the v-prediction loss with min-SNR weights
    over the frames not given, the update, and the moving averages that are saved."""

    def __init__(self, config: TrainConfig, models: _Models, device: torch.device) -> None:
        from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

        self.config, self.device = config, device
        self.vae = models.vae.to(device).eval().requires_grad_(False)
        self.unet = models.unet.to(device).train()
        self.text = models.text_encoder.to(device)
        self.text_trainable = models.text_trainable
        self.text.train(self.text_trainable).requires_grad_(self.text_trainable)
        self.tokens = TokenCache(models.tokenizer)
        self.ema = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.ema_text = copy.deepcopy(self.text).eval().requires_grad_(False)
        #: (moving average, live) parameter lists
        self.averaged = [(list(self.ema.parameters()), list(self.unet.parameters()))]
        if self.text_trainable:
            self.averaged.append((list(self.ema_text.parameters()), list(self.text.parameters())))
        self.alphas = DDPMScheduler(**NOISE).alphas_cumprod.to(device)
        self.params = list(self.unet.parameters())
        framewise = {n for n, _ in self.unet.named_parameters() if is_framewise(n)}
        # each group's share of the schedule's rate
        groups: list[dict[str, Any]] = [{"params": list(self.params), "share": 1.0}]
        if config.frame_lr and framewise:
            named = list(self.unet.named_parameters())
            groups = [
                {"params": [p for n, p in named if n not in framewise], "share": 1.0},
                {
                    "params": [p for n, p in named if n in framewise],
                    "share": config.frame_lr / config.lr,
                },
            ]
        if self.text_trainable:
            self.params += list(self.text.parameters())
            groups.append(
                {"params": list(self.text.parameters()), "share": config.text_lr / config.lr}
            )
        for group in groups:
            group["lr"] = config.lr * group["share"]
        # one fused kernel for the whole update on a GPU
        self.opt = torch.optim.AdamW(
            groups, lr=config.lr, weight_decay=0.01, fused=device.type == "cuda"
        )
        self.start_clock()
        self.n_params = sum(p.numel() for p in self.unet.parameters())
        #: the diffusion times and noise of every step, from their own generator: a run's draws
        #: do not depend on what else consumes torch's global generator (a compile does)
        self.draws = torch.Generator(device).manual_seed(config.seed + 1_000_003)
        if config.compile:  # in place, static shapes: a graph per call length
            from storygen.accel import compile_unet

            compile_unet(self.unet)

    def start_clock(self) -> None:
        """(Re)start the learning-rate schedule and the time budget (``max_minutes``) at
        zero: done once more right before the first step, so that what precedes it (the
        held-out loss of the run's start) is not training time."""
        from curate.training.loop import ClockCosineSchedule

        config = self.config
        budget = config.max_minutes * 60 if config.max_minutes else None
        self.clock = ClockCosineSchedule(self.opt, config.lr, config.steps, budget)

    def loss(
        self,
        frames: torch.Tensor,
        prompts: list[list[str]],
        mask: torch.Tensor,
        spacing: Any,
        progress: torch.Tensor | None = None,
        *,
        weighting: str | None = None,
        high_noise: float | None = None,
        boundary_weight: float | None = None,
    ) -> torch.Tensor:
        """The weighted v loss of a batch over the frames not given (``weighting``: the
        run's ``loss_weight`` unless given; ``high_noise``: the share of windows drawn at
        the noisiest times, the run's unless given; ``boundary_weight``: the weight of a frame
        next to a given one, the run's unless given)."""
        device = self.device
        mask = mask.to(device, non_blocking=True)
        spacing = spacing.to(device, non_blocking=True)
        if progress is not None:
            progress = progress.to(device, non_blocking=True)
        if self.config.text_to_video:  # a stock text-to-video UNet: nothing given, no frame rate
            mask, spacing = torch.zeros_like(mask), torch.ones_like(spacing)
        b, f = frames.shape[:2]
        with torch.no_grad():
            # (b f) h w c -> latents (b f) c h w -> b c f h w
            z = encode(self.vae, frames.to(device, non_blocking=True).flatten(0, 1)).float()
            x0 = z.reshape(b, f, *z.shape[1:]).transpose(1, 2).contiguous()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            with torch.set_grad_enabled(self.text_trainable):
                context = _encode_prompts(self.tokens, self.text, prompts, device)
            t = self.draw_times(
                b,
                self.config.high_noise if high_noise is None else high_noise,
                self.config.high_noise_from,
            )
            noise = torch.randn(x0.shape, device=device, generator=self.draws, dtype=x0.dtype)
            a = self.alphas[t].view(b, 1, 1, 1, 1)
            noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
            pred = self.unet(
                noisy, t, context, known=x0, mask=mask, spacing=spacing, progress=progress
            )
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v
        snr = self.alphas[t] / (1 - self.alphas[t])
        weight = time_weight(snr, weighting or self.config.loss_weight).view(b, 1, 1, 1, 1)
        frame_weight = 1 - mask  # (b, f): the frames not given
        boundary = self.config.boundary_weight if boundary_weight is None else boundary_weight
        if boundary != 1.0:
            given = torch.nn.functional.pad(mask, (1, 1))
            beside = ((given[:, :-2] + given[:, 2:]) > 0).to(mask.dtype)  # a neighbour given
            frame_weight = frame_weight * (1 + (boundary - 1) * beside)
        unknown = frame_weight[:, None, :, None, None].expand_as(x0)
        err = (pred.float() - target) ** 2 * weight * unknown
        return err.sum() / unknown.sum().clamp(min=1)

    def draw_times(
        self, count: int, high_noise: float, high_from: int = HIGH_NOISE_FROM
    ) -> torch.Tensor:
        """``count`` diffusion times: uniform, except a ``high_noise`` share of them drawn
        uniformly from the noisiest (``high_from`` on)."""
        device, steps = self.device, len(self.alphas)
        t = torch.randint(0, steps, (count,), device=device, generator=self.draws)
        if high_noise > 0:
            high = torch.randint(
                min(high_from, steps - 1), steps, (count,), device=device, generator=self.draws
            )
            pick = torch.rand(count, device=device, generator=self.draws) < high_noise
            t = torch.where(pick, high, t)
        return t

    @torch.no_grad()
    def heldout_loss(self, *, ema: bool, windows: int = HELDOUT_WINDOWS) -> float:
        """The loss on a fixed held-out set: ``windows`` windows drawn from a seed training
        never uses, each role and a spread of diffusion times, the same noise every time; so,
        unlike the training loss (a few windows at random times each step), it compares a
        run's start with its end, and one run with another. ``ema``: the moving-average
        weights (what is saved) instead of the live ones."""
        rng = np.random.default_rng(HELDOUT_SEED)
        size, frames = self.config.size, self.config.frames
        drawn = [sample_window(rng, frames=frames, size=size) for _ in range(windows)]
        unet, text = self.unet, self.text
        if ema:
            self.unet, self.text = self.ema, self.ema_text
        draws, self.draws = self.draws, torch.Generator(self.device).manual_seed(HELDOUT_SEED)
        was_training = self.unet.training
        self.unet.eval()
        try:
            total = 0.0
            for start in range(0, windows, self.config.batch_size):
                part = drawn[start : start + self.config.batch_size]
                loss = self.loss(
                    *collate(part), weighting="min-snr", high_noise=0.0, boundary_weight=1.0
                )
                total += float(loss) * len(part)
            return total / windows
        finally:
            self.unet.train(was_training)
            self.unet, self.text, self.draws = unet, text, draws

    def step(self, step: int, batch: Any) -> torch.Tensor:
        """One update; returns the loss, left on the device."""
        loss = self.loss(*batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.clock.apply(step)
        for group in self.opt.param_groups:  # the schedule sets one rate; each runs at its share
            group["lr"] *= group["share"]
        self.opt.step()
        decay = min(self.config.ema, (1 + step) / (10 + step))
        with torch.no_grad():  # one fused update per model, not a kernel per tensor
            for ema, live in self.averaged:
                torch._foreach_lerp_(ema, live, 1 - decay)
        return loss.detach()


@dataclass
class _Run:
    steps: int
    time_s: float
    losses: list[float]
    history: list[dict[str, float]]
    data_wait_s: float
    #: stopped by Ctrl-C before its budget ended
    interrupted: bool = False


def _loop(config: TrainConfig, trainer: _Trainer, loader: Any) -> _Run:
    """Steps until the step count or the time budget ends, or Ctrl-C, logging every
    ``log_every``."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    losses: list[float] = []
    pending: list[torch.Tensor] = []  # losses still on the device: one host sync per log line
    history: list[dict[str, float]] = []
    bar = tqdm(total=config.steps, desc="unet", unit="step", mininterval=5)
    step = 0
    waited = 0.0  # seconds spent waiting for the data loader
    interrupted = False
    tick = time.perf_counter()
    try:
        for batch in loader:
            waited += time.perf_counter() - tick
            pending.append(trainer.step(step, batch))
            step += 1
            bar.total = expected_steps(trainer.clock, step, config.steps)
            bar.update(1)
            if step % config.log_every == 0:
                losses.extend(torch.stack(pending).float().cpu().tolist())
                pending.clear()
                mean = float(np.mean(losses[-config.log_every :]))
                elapsed = time.perf_counter() - started
                history.append(
                    {"step": step, "loss": mean, "time_s": elapsed, "data_wait_s": waited}
                )
                bar.set_postfix(loss=f"{mean:.4f}")
                logger.info(
                    "step %s loss %.4f (%.0f s, %.0f s waiting for data)",
                    step,
                    mean,
                    elapsed,
                    waited,
                )
            if trainer.clock.finished(step):
                break
            tick = time.perf_counter()
    except KeyboardInterrupt:  # stop here, as the end of the budget would
        interrupted = True
        logger.warning("interrupted (Ctrl-C) after %s steps", step)
    bar.close()
    if pending:
        losses.extend(torch.stack(pending).float().cpu().tolist())
    return _Run(step, time.perf_counter() - started, losses, history, waited, interrupted)


def train(config: TrainConfig, *, force: bool = False) -> dict[str, Any]:
    """Train (or continue) and write the model folder; returns the training report.

    Everything that can be checked before training is, first: the devices, ``out`` (a folder
    that is not empty is refused unless ``force``, or unless it is the ``init`` folder, which
    the run then rewrites in place), the ``init`` folder's layout, ``text_encoder`` and
    ``shards``; :class:`RunRefused` says what is wrong. The folder is written beside ``out``
    and takes its place whole once complete (see the module's notes).

    The global torch settings a run changes (the seed of torch's generators, cuDNN's autotuner,
    TF32 matmuls) are as they were when it returns."""
    device = resolve_device(config.device)
    out, in_place = check_out(config, force=force)
    previous = check_init(config) if config.init else {}
    if not config.init:
        text_encoder_folder(config)  # a --text-encoder that is no CLIP folder is refused now
    cuda = device.type == "cuda" or torch.cuda.is_initialized()
    benchmark = torch.backends.cudnn.benchmark
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if cuda else []):
            return _train(config, device, out, in_place, previous)
    finally:
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def out_folder(text: str) -> Path:
    """The folder ``--out`` names (``.`` or ``..``: by its own name, for the one beside it)."""
    out = Path(text)
    return Path(os.path.abspath(out)) if out.name in ("", ".", "..") else out


def check_out(config: TrainConfig, *, force: bool = False) -> tuple[Path, bool]:
    """(the folder to write, whether it is the ``init`` folder, rewritten in place); refused
    where it is a file, or a folder that is not empty (unless ``force``, or it is ``init``)."""
    if not config.out:
        raise RunRefused("--out: name the model folder to write")
    out = out_folder(config.out)
    flag = f"--out {config.out}"
    try:
        above = next((p for p in out.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise RunRefused(f"{flag}: {above} is a file, not a folder")
        if not (out.exists() or out.is_symlink()):
            return out, False
        if not out.is_dir():
            raise RunRefused(f"{flag}: exists and is not a folder")
        init = Path(config.init) if config.init else None
        if init is not None and init.is_dir() and out.samefile(init):
            return out, True
        if not force and any(out.iterdir()):
            raise RunRefused(
                f"{flag}: the folder is not empty, and the run writes a whole model folder in "
                f"its place: choose a new folder, pass --init {config.out} to continue the model "
                "in it, or --force to replace it"
            )
    except OSError as exc:
        raise RunRefused(f"{flag}: cannot read the folder ({exc.strerror or exc})") from None
    return out, False


def _scratch(out: Path) -> Path:
    """A new, empty folder beside ``out``, under a hidden temporary name: the run writes the
    model there, then moves it into place (created before training: an ``out`` whose parent
    cannot be written is refused at once)."""
    from storygen.model_cli import scratch_beside

    try:
        return scratch_beside(out)
    except OSError as exc:
        raise RunRefused(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None


def _carry_over(old: Path, new: Path) -> None:
    """What a folder rewritten in place (``--out X --init X``) holds beyond the model the run
    writes, copied into the new one: a model card written by hand, logs, notes."""
    for entry in sorted(old.iterdir()):
        target = new / entry.name
        if entry.name == "README.md" and target.exists():
            if _written_card(old):
                continue  # a card a run wrote: the new run's replaces it
            logger.info(
                "kept %s (a model card not written by storygen train); training.json holds "
                "this run's numbers",
                entry,
            )
            target.unlink()
        elif target.exists() or target.is_symlink():
            continue  # the run wrote its own
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True)
        else:
            shutil.copy2(entry, target, follow_symlinks=False)


def _replace_file(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _written_card(folder: Path) -> bool:
    """Whether ``folder``'s README.md is a card a run wrote (or there is none)."""
    card = folder / "README.md"
    if not card.is_file():
        return not card.exists()
    with card.open(errors="replace") as f:
        return f.readline().rstrip("\n") == CARD_MARK


def _train(
    config: TrainConfig,
    device: torch.device,
    out: Path,
    in_place: bool,
    previous: dict[str, Any],
) -> dict[str, Any]:
    """:func:`train`, with the global torch settings it runs under."""
    from storygen.model_cli import swap_in

    torch.manual_seed(config.seed)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True  # the autoencoder's float32 encode
    torch.backends.cudnn.allow_tf32 = True
    # the data (--shards read and checked) and the folder's parent, before anything trains
    loader = _loader(config, device, config.seed + 1000 * len(previous.get("runs", [])))
    fps = _data_fps(config)
    tmp = _scratch(out)
    try:
        models = _start(config, device, previous)
        trainer = _Trainer(config, models, device)
        logger.info("training a %s-parameter MaskedUNet3D on %s", trainer.n_params, device)
        # before the first step the moving average is the starting weights, and it is never
        # compiled: no graph is compiled for the held-out batches
        windows = config.heldout_windows
        heldout_start = trainer.heldout_loss(ema=True, windows=windows) if windows else None
        trainer.start_clock()  # the time budget is the steps'
        run = _loop(config, trainer, loader)
        if run.interrupted and not run.steps:
            raise KeyboardInterrupt  # nothing learnt: nothing to save
        heldout_end = None
        if windows and not run.interrupted:  # a stopped run is saved without delay
            heldout_end = trainer.heldout_loss(ema=True, windows=windows)
        if heldout_start is not None and heldout_end is not None:
            logger.info("held-out loss %.4f -> %.4f", heldout_start, heldout_end)
        save_folder(
            tmp,
            unet=trainer.ema,
            vae=trainer.vae,
            text_encoder=trainer.ema_text,
            tokenizer=models.tokenizer,
            frames_per_call=config.frames,
            size=config.size,
            fps=fps,
        )
        report = _report(config, trainer, models, run, heldout_start, heldout_end)
        report["fps"] = fps
        (tmp / "training.json").write_text(json.dumps(report, indent=2))
        (tmp / "README.md").write_text(model_card(report, config.out))
        if in_place:
            _carry_over(out, tmp)
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote %s (%s steps%s)", out, run.steps, ", interrupted" if run.interrupted else "")
    if config.eval_stories and not run.interrupted:
        from storygen.training.probe import evaluate_folder

        try:
            report["eval"] = evaluate_folder(out, stories=config.eval_stories, device=str(device))
        except KeyboardInterrupt:
            logger.warning(
                "the probe (--eval-stories) was interrupted: %s is saved without it", out
            )
            return report | {"probe_interrupted": True}
        _replace_file(out / "training.json", json.dumps(report, indent=2))
        if _written_card(out):
            _replace_file(out / "README.md", model_card(report, config.out))
    return report


def _report(
    config: TrainConfig,
    trainer: _Trainer,
    models: _Models,
    run: _Run,
    heldout_start: float | None,
    heldout_end: float | None,
) -> dict[str, Any]:
    """The folder's training report (``training.json``): its runs so far, this one last."""
    previous = models.previous
    runs = list(previous.get("runs", []))
    if models.vae_run is not None:
        runs.append({"part": "autoencoder", **asdict(models.vae_run)})
    runs.append(
        {
            "part": "unet",
            "steps": run.steps,
            "time_s": run.time_s,
            "interrupted": run.interrupted,
            "final_loss": float(np.mean(run.losses[-100:])) if run.losses else None,
            # the same fixed windows, times and noise at the run's start and end
            "heldout_loss": {"start": heldout_start, "end": heldout_end},
            "batch_size": config.batch_size,
            "loss_weight": config.loss_weight,
            "high_noise": config.high_noise,
            "high_noise_from": config.high_noise_from,
            "frame_positions": bool(trainer.unet.config.get("frame_position_embedding", False)),
            "coordinates": bool(trainer.unet.config.get("coordinate_channels", False)),
            "text_to_video": bool(config.text_to_video),
            "boundary_weight": config.boundary_weight,
            "lr": config.lr,
            "text_lr": config.text_lr if trainer.text_trainable else None,
            "frame_lr": config.frame_lr,
            "data_wait_s": run.data_wait_s,
            "seed": config.seed,
            "device": torch.cuda.get_device_name(trainer.device)
            if trainer.device.type == "cuda"
            else "cpu",
            "history": run.history,
        }
    )
    return {
        "config": asdict(config),
        "unet_parameters": trainer.n_params,
        "vae_parameters": sum(p.numel() for p in trainer.vae.parameters()),
        "text_encoder_parameters": sum(p.numel() for p in trainer.ema_text.parameters()),
        "text_encoder_trained": trainer.text_trainable,
        "steps_done": run.steps + int(previous.get("steps_done", 0)),
        "unet_time_s": run.time_s + float(previous.get("unet_time_s", 0.0)),
        "runs": runs,
    }


#: the probe's numbers in the model card, by their keys in its summary
_PROBE_COLUMNS = {
    "all": "all facts",
    "color": "colour",
    "shape": "shape",
    "background": "background",
    "motion": "motion",
    "identity": "identity",
    "flicker": "flicker",
    "seam_ratio": "seams",
}


def model_card(report: dict[str, Any], out: str) -> str:
    """The folder's ``README.md``: what the model is, how it was trained, how to use it
    (``out``: the folder as the command line named it)."""
    config = report["config"]
    unet_runs = [r for r in report["runs"] if r.get("part") == "unet"]
    last = unet_runs[-1]
    name = out_folder(out).name
    text = "fine-tuned along" if report["text_encoder_trained"] else "frozen"
    data = (
        f"windows of the `curate export` shards in `{config['shards']}`"
        if config.get("shards")
        else "shapes-world story windows rendered on the fly"
    )
    stopped = " (stopped by Ctrl-C)" if last.get("interrupted") else ""
    start, end = last["heldout_loss"]["start"], last["heldout_loss"]["end"]
    if start is None:
        heldout = "not measured (`--heldout-windows 0`)"
    elif end is None:
        heldout = f"{start:.4f} at its start (its end not measured: interrupted)"
    else:
        heldout = f"{start:.4f} → {end:.4f} (fixed windows, times and noise)"
    lines = [
        CARD_MARK,
        f"# {name}: a shapes-world storygen model",
        "",
        "A latent video diffusion model in the `StoryVideoPipeline` folder layout, written by "
        f"`storygen train`: a `MaskedUNet3D` of {report['unet_parameters']:,} parameters (preset "
        f"`{config['preset']}`), its `AutoencoderKL` ({report['vae_parameters']:,} parameters) and "
        f"a CLIP text encoder ({report['text_encoder_parameters']:,} parameters, {text}). It "
        f"draws {config['size']}×{config['size']} px frames, {config['frames']} per model call, "
        "the settings its `sampling.json` recommends.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| UNet steps | {report['steps_done']:,} in {len(unet_runs)} run(s), "
        f"{report['unet_time_s'] / 60:.1f} minutes |",
        f"| data | {data} |",
        f"| last run | {last['steps']:,} steps{stopped}, batch {last['batch_size']}, learning "
        f"rate {last['lr']:g}, `{last['loss_weight']}` loss, on {last['device']} |",
        f"| held-out loss, last run | {heldout} |",
        "",
        "`training.json` holds every run's settings and numbers.",
    ]
    probe = report.get("eval")
    if probe:
        modes = [k for k, v in probe.items() if isinstance(v, dict) and "all" in v]
        lines += [
            "",
            f"## Probe: {config['eval_stories']} held-out stories",
            "",
            "| | " + " | ".join(_PROBE_COLUMNS.values()) + " |",
            "|---" * (len(_PROBE_COLUMNS) + 1) + "|",
        ]
        for mode in modes:
            cells = [probe[mode].get(k) for k in _PROBE_COLUMNS]
            lines.append(
                f"| {mode} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in cells) + " |"
            )
    lines += [
        "",
        "## Use",
        "",
        "```",
        f"storygen render story.yaml --model {out} --out story.mp4 --preview sheet.png",
        f"storygen train --out {out} --init {out} --max-minutes 8      # train it on",
        "```",
        "",
    ]
    return "\n".join(lines)
