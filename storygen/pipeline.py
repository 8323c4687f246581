"""``StoryVideoPipeline``: long videos from timed prompts by diffusion over diffusion.

A :class:`~storygen.plan.Plan` says which model call makes which frames. The pipeline runs it
level by level: level 0 draws ``L`` keyframes over the whole story (nothing known); every later
level fills between adjacent frames of the level before (first and last frame known). The
calls of a level are independent, so they are batched (``micro_batch`` calls per forward) and
spread over ``devices``. Every call draws its own noise from ``(seed, level, call index)``, so
a seed reproduces a video whatever the micro-batch size, device count or resumption.

Two kinds of UNet run the same plan:

- :class:`~storygen.models.MaskedUNet3D`, trained for masked conditioning: the known frames
  and their mask are extra input channels.
- any ``UNet3DConditionModel`` (ModelScope's text-to-video UNet, as diffusers loads it), used
  training-free: the known frames, noised to the current step, replace their positions at
  every step, with RePaint-style resampling to blend the seams (see
  :mod:`storygen.training_free`).

Both condition each frame on its own prompt (:func:`storygen.models.unet3d_forward`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import resource
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput
from einops import rearrange

from storygen.models import MaskedUNet3D, unet3d_forward
from storygen.plan import Call, Plan, autoregressive_plan, build_plan, plan_story, with_prompts
from storygen.text import PromptCache

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("np", "pt", "pil", "latent", None)
AUTOREGRESSIVE = "autoregressive"


# ----------------------------------------------------------------------------- outputs
@dataclass
class GenerationStats:
    """What a run cost: model calls, sequential rounds, UNet evaluations, time, memory."""

    num_frames: int
    model_calls: int
    rounds: int
    unet_forwards: int = 0
    calls_run: int = 0
    calls_from_cache: int = 0
    wall_time_s: float = 0.0
    level_times_s: list[float] = field(default_factory=list)
    peak_memory_bytes: int = 0
    peak_memory_kind: str = "cpu-rss"
    #: most model-space frames held at once: the earlier level's frames still needed as
    #: known frames plus those waiting to be written, not the whole video
    peak_frames_held: int = 0
    devices: list[str] = field(default_factory=list)
    output_path: str | None = None
    cache_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StoryVideoOutput(BaseOutput):
    """``frames``: (N, H, W, 3) uint8 for "np", (N, 3, H, W) float in [0, 1] for "pt", a list
    of PIL images for "pil", model space (N, C, h, w) for "latent"; None with
    ``output_type=None`` (frames only streamed to ``output_path``)."""

    frames: Any
    plan: Plan
    stats: GenerationStats
    #: the global level's keyframes, (H, W, 3) uint8 by frame index (for preview sheets)
    keyframes: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class CallResult:
    """Handed to ``callback_on_call_end`` after every model call."""

    level: int
    index: int
    call: Call
    #: the call's frames in model space: (C, F, h, w)
    sample: torch.Tensor
    from_cache: bool


# ----------------------------------------------------------------------------- helpers
def call_seed(seed: int, level: int, index: int) -> int:
    """A per-call seed from (seed, level, call index): independent of batching and devices."""
    digest = hashlib.sha256(f"storygen:{seed}:{level}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _fingerprint(module: torch.nn.Module | None) -> str:
    """A cheap fingerprint of a module's weights (sum and squared norm of every tensor)."""
    if module is None:
        return "none"
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in module.state_dict().items():
            t = p.detach().float()
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(np.float64(t.sum().item()).tobytes())
            h.update(np.float64(t.square().sum().item()).tobytes())
    return h.hexdigest()[:16]


def _config_dict(module: Any) -> Any:
    config = getattr(module, "config", None)
    if config is None:
        return None
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(config, default=str, sort_keys=True))


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(x, "n c h w -> n h w c").cpu().numpy()


@dataclass
class _Batch:
    level: int
    indices: list[int]
    calls: list[Call]


# ----------------------------------------------------------------------------- pipeline
class StoryVideoPipeline(DiffusionPipeline):
    """Diffusion over diffusion with a global model and local models (NUWA-XL).

    Components: ``unet`` (a :class:`~storygen.models.MaskedUNet3D`, or a stock
    ``UNet3DConditionModel`` for the training-free mode), ``scheduler`` (any diffusers
    scheduler: DDIM, DPM-Solver++, Euler, ...), ``text_encoder`` (``CLIPTextModel``),
    ``tokenizer`` (``CLIPTokenizer``), optional ``vae`` (``AutoencoderKL``: the models then
    work on latents, encoded and decoded frame by frame) and optional ``local_unet`` (the
    local levels' model, as the paper trains one per depth; ``unet`` serves every level
    otherwise).
    """

    unet: Any
    scheduler: Any
    text_encoder: Any
    tokenizer: Any
    vae: Any
    local_unet: Any

    model_cpu_offload_seq: Any = "text_encoder->unet->local_unet->vae"
    _optional_components = ["vae", "local_unet"]

    #: training-free defaults (RePaint): repeat each window of ``jump_length`` steps this many
    #: times; a masked model needs no resampling
    default_resample_steps = 1
    default_jump_length = 1

    def __init__(
        self,
        unet: Any,
        scheduler: Any,
        text_encoder: Any,
        tokenizer: Any,
        vae: Any = None,
        local_unet: Any = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            unet=unet,
            scheduler=scheduler,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            vae=vae,
            local_unet=local_unet,
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> StoryVideoPipeline:
        """Load a model folder in either layout.

        A ModelScope-layout text-to-video folder (``TextToVideoSDPipeline``'s) loads as a
        :class:`~storygen.training_free.TrainingFreeStoryPipeline` when called on this class.
        A missing config or weight file raises FileNotFoundError naming it.
        """
        from storygen.training_free import (
            TrainingFreeStoryPipeline,
            check_model_files,
            is_t2v_layout,
        )

        path = Path(pretrained_model_name_or_path)
        if not path.is_dir():
            raise FileNotFoundError(f"model folder {path} does not exist")
        check_model_files(path)
        if cls is StoryVideoPipeline and is_t2v_layout(path):
            cls = TrainingFreeStoryPipeline
        return super().from_pretrained(str(path), **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def masked(self) -> bool:
        """True for a mask-conditioned UNet, False for the training-free replacement mode."""
        return isinstance(self.unet, MaskedUNet3D)

    @property
    def sample_channels(self) -> int:
        if self.vae is not None:
            return int(self.vae.config.latent_channels)
        if isinstance(self.unet, MaskedUNet3D):
            return self.unet.sample_channels
        return int(self.unet.config.out_channels)

    @property
    def vae_scale(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def unet_for_level(self, level: int) -> Any:
        return self.unet if level == 0 or self.local_unet is None else self.local_unet

    def default_size(self) -> tuple[int, int]:
        """(height, width) in pixels that the model was built for."""
        if self.vae is not None:
            size = self.vae.config.sample_size
        else:
            size = self.unet.config.sample_size
        if isinstance(size, (list, tuple)):
            return int(size[0]), int(size[1])
        size = int(size or 32)
        return size, size

    # ------------------------------------------------------------------ inputs
    def check_inputs(
        self,
        prompt: Any,
        num_frames: int | None,
        frames_per_call: int,
        num_inference_steps: int,
        guidance_scale: float,
        height: int,
        width: int,
        micro_batch: int,
        output_type: str | None,
        resample_steps: int,
        jump_length: int,
    ) -> None:
        if prompt is None or (isinstance(prompt, (str, list, tuple)) and len(prompt) == 0):
            raise ValueError("prompt must be a string, a list of per-frame prompts or a script")
        if isinstance(prompt, (list, tuple)):
            if not all(isinstance(p, str) for p in prompt):
                raise ValueError("a prompt list must hold one string per frame")
            if num_frames is not None and len(prompt) != num_frames:
                raise ValueError(f"got {len(prompt)} per-frame prompts for num_frames={num_frames}")
        if isinstance(prompt, str) and num_frames is None:
            raise ValueError("num_frames is required with a single prompt string")
        for name, value, low in (
            ("frames_per_call", frames_per_call, 3),
            ("num_inference_steps", num_inference_steps, 1),
            ("micro_batch", micro_batch, 1),
            ("resample_steps", resample_steps, 1),
            ("jump_length", jump_length, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale)):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        factor = self.vae_scale
        if height % factor or width % factor or height < factor or width < factor:
            raise ValueError(
                f"height and width must be positive multiples of {factor}, got {height}x{width}"
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")

    def build_plan(
        self,
        prompt: Any,
        *,
        num_frames: int | None,
        fps: float | None,
        frames_per_call: int,
        depth: int | None,
        policy: str,
        overlap: int = 1,
    ) -> Plan:
        """The plan, with per-frame prompts on every call."""
        if not isinstance(prompt, (str, list, tuple)):  # a StoryScript
            return plan_story(
                prompt,
                fps=fps,
                num_frames=num_frames,
                frames_per_call=frames_per_call,
                depth=depth,
                policy=policy,
                overlap=overlap,
            )
        prompts = [prompt] * int(num_frames or 0) if isinstance(prompt, str) else list(prompt)
        if policy == AUTOREGRESSIVE:
            plan = autoregressive_plan(
                len(prompts), frames_per_call=frames_per_call, overlap=overlap
            )
        else:
            plan = build_plan(
                len(prompts), frames_per_call=frames_per_call, depth=depth, policy=policy
            )
        return with_prompts(plan, prompts, fps=fps)

    # ------------------------------------------------------------------ text
    def encode_prompts(
        self, prompts: Sequence[str], negative_prompt: str
    ) -> tuple[PromptCache, torch.Tensor]:
        """Encode every distinct prompt once; returns the table and the negative embedding."""
        cache = PromptCache(self.tokenizer, self.text_encoder)
        cache.add(prompts)
        negative = cache.get([negative_prompt])[0]
        return cache, negative

    # ------------------------------------------------------------------ VAE
    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) pixels in [-1, 1] -> (N, C, h, w) model space, frame by frame."""
        if self.vae is None:
            return frames.float()
        vae = self.vae
        latents = vae.encode(frames.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
        return (latents * vae.config.scaling_factor).float().cpu()

    @torch.no_grad()
    def decode_frames(self, samples: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """(N, C, h, w) model space -> (N, 3, H, W) pixels in [-1, 1], ``chunk`` at a time."""
        if self.vae is None:
            return samples.float().clamp(-1, 1)
        vae = self.vae
        out = []
        for start in range(0, samples.shape[0], chunk):
            z = samples[start : start + chunk].to(device=vae.device, dtype=vae.dtype)
            out.append(vae.decode(z / vae.config.scaling_factor).sample.float().cpu())
        return torch.cat(out).clamp(-1, 1)

    # ------------------------------------------------------------------ one batch of calls
    def predict(
        self,
        unet: Any,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        known: torch.Tensor,
        mask: torch.Tensor,
        spacing: torch.Tensor,
        guidance_scale: float,
        negative: torch.Tensor | None,
    ) -> torch.Tensor:
        """The model's output for x (B, C, F, h, w), with classifier-free guidance."""
        if negative is not None:
            x = torch.cat([x, x])
            context = torch.cat([negative.expand_as(context), context])
            known, mask = torch.cat([known, known]), torch.cat([mask, mask])
            spacing = spacing.repeat(2)
        x = x.to(unet.dtype)
        if isinstance(unet, MaskedUNet3D):
            out = unet(x, t, context, known=known.to(unet.dtype), mask=mask, spacing=spacing)
        else:
            out = unet3d_forward(unet, x, t, context)
        out = out.float()
        if negative is not None:
            uncond, cond = out.chunk(2)
            out = uncond + guidance_scale * (cond - uncond)
        return out

    @torch.no_grad()
    def denoise(
        self,
        unet: Any,
        *,
        noise: torch.Tensor,
        known: torch.Tensor,
        mask: torch.Tensor,
        context: torch.Tensor,
        spacing: torch.Tensor,
        generators: Sequence[torch.Generator],
        num_inference_steps: int,
        guidance_scale: float,
        negative: torch.Tensor | None,
        resample_steps: int,
        jump_length: int,
        reconstruction_guidance: float = 0.0,
    ) -> tuple[torch.Tensor, int]:
        """Sample one batch of calls; returns the clean samples and the UNet evaluations.

        noise, known: (B, C, F, h, w) float32 on the UNet's device; mask: (B, F); context:
        (B, F, S, D); one generator per call for the noise drawn along the way. Known frames,
        noised to the current step, replace their positions before every model evaluation
        (for the masked model this is what it saw in training; for a plain text-to-video UNet
        it is the whole condition), and the exact known frames replace them at the end.
        """
        from storygen.training_free import reconstruction_step, renoise

        device = noise.device
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = list(scheduler.timesteps)
        x = noise * scheduler.init_noise_sigma
        known_mask = mask[:, None, :, None, None].to(torch.bool)
        any_known = bool(mask.any())
        forwards = 0

        def fresh_noise() -> torch.Tensor:
            draws = [torch.randn(noise.shape[1:], generator=g) for g in generators]
            return torch.stack(draws).to(device)

        def model(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.predict(
                unet, x_in, t, context, known, mask, spacing, guidance_scale, negative
            )

        def step(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            nonlocal forwards
            if any_known:
                noised = scheduler.add_noise(known, fresh_noise(), t.reshape(1))
                x = torch.where(known_mask, noised.to(x.dtype), x)
            if reconstruction_guidance > 0 and any_known:
                out = reconstruction_step(
                    scheduler,
                    x,
                    t,
                    known,
                    known_mask.to(x.dtype),
                    reconstruction_guidance,
                    lambda x_in: model(x_in, t),
                )
            else:
                out = model(scheduler.scale_model_input(x, t), t)
            forwards += 1
            return scheduler.step(out, t, x).prev_sample

        # RePaint: denoise a window of `jump_length` steps; then, resample_steps - 1 times,
        # noise back to the window's start and denoise it again (only with known frames)
        resample = resample_steps if any_known else 1
        for i in range(0, len(timesteps), jump_length):
            window = timesteps[i : i + jump_length]
            t_end = timesteps[i + jump_length] if i + jump_length < len(timesteps) else None
            for r in range(resample):
                last = r == resample - 1
                snapshot = None if last else copy.deepcopy(scheduler)
                for t in window:
                    x = step(x, t)
                if snapshot is not None:
                    x = renoise(scheduler, x, t_from=t_end, t_to=window[0], noise=fresh_noise())
                    scheduler = snapshot
        x = torch.where(known_mask, known.to(x.dtype), x)
        return x, forwards

    # ------------------------------------------------------------------ main
    @torch.no_grad()
    def __call__(
        self,
        prompt: Any,
        num_frames: int | None = None,
        *,
        fps: float | None = None,
        frames_per_call: int = 16,
        depth: int | None = None,
        policy: str = "stretch",
        overlap: int = 1,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        negative_prompt: str = "",
        generator: torch.Generator | int | None = None,
        height: int | None = None,
        width: int | None = None,
        micro_batch: int = 16,
        output_type: str | None = "np",
        output_path: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        devices: Sequence[str | torch.device] | None = None,
        resample_steps: int | None = None,
        jump_length: int | None = None,
        reconstruction_guidance: float = 0.0,
        callback_on_call_end: Callable[[StoryVideoPipeline, CallResult], None] | None = None,
        callback_on_level_end: Callable[[StoryVideoPipeline, int], None] | None = None,
        progress: bool = True,
    ) -> StoryVideoOutput:
        """Render a story.

        ``prompt``: one string for every frame, a list with one prompt per frame, or a
        :class:`~storygen.script.StoryScript` (``fps`` then defaults to the script's and
        ``num_frames`` to its duration × fps). ``policy``: ``"stretch"`` / ``"trim"``
        (hierarchical, see :mod:`storygen.plan`) or ``"autoregressive"`` (sliding windows
        given ``overlap`` frames: the baseline). ``generator``: a seed, or a
        ``torch.Generator`` whose initial seed is used; every call derives its own noise from
        it. ``guidance_scale`` 1 turns classifier-free guidance off. ``micro_batch``: calls per
        forward pass. ``devices``: spread the calls of a level over these devices (one model
        copy each). ``cache_dir``: keep each finished batch of calls on disk and resume from
        it. ``output_path``: stream frames to a video file (mp4 / gif) as soon as they are
        final; with ``output_type=None`` no frames are kept in memory.
        ``resample_steps`` / ``jump_length``: RePaint resampling of calls with known frames
        (default on for a plain text-to-video UNet). ``reconstruction_guidance``: weight of a
        gradient step pulling the predicted clean sample towards the known frames (Ho et al.
        2022); it back-propagates through the UNet, so each step costs about three forwards.
        """
        started = time.perf_counter()
        resample_steps = resample_steps or (1 if self.masked else self.default_resample_steps)
        jump_length = jump_length or self.default_jump_length
        default_h, default_w = self.default_size()
        height = height or default_h
        width = width or default_w

        # 1. check inputs
        self.check_inputs(
            prompt,
            num_frames,
            frames_per_call,
            num_inference_steps,
            guidance_scale,
            height,
            width,
            micro_batch,
            output_type,
            resample_steps,
            jump_length,
        )
        seed = self.seed_of(generator)
        if not (
            isinstance(reconstruction_guidance, (int, float))
            and math.isfinite(reconstruction_guidance)
            and reconstruction_guidance >= 0
        ):
            raise ValueError(
                f"reconstruction_guidance must be a number >= 0, got {reconstruction_guidance!r}"
            )

        # 2. plan
        plan = self.build_plan(
            prompt,
            num_frames=num_frames,
            fps=fps,
            frames_per_call=frames_per_call,
            depth=depth,
            policy=policy,
            overlap=overlap,
        )
        if plan.dropped:
            logger.info(
                "trim policy: %s frames past the end are made and dropped", len(plan.dropped)
            )
        prompts = list(plan.prompts or ())

        # 3. encode prompts, each distinct one once
        text_cache, negative = self.encode_prompts(prompts, negative_prompt)

        # 4. global pass, then the local levels; 5. decode and export as frames become final
        settings = {
            "seed": seed,
            "negative_prompt": negative_prompt,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "height": height,
            "width": width,
            "resample_steps": resample_steps,
            "jump_length": jump_length,
            "reconstruction_guidance": reconstruction_guidance,
        }
        runner = _PlanRunner(
            self,
            plan=plan,
            seed=seed,
            text_cache=text_cache,
            negative=negative if guidance_scale != 1.0 else None,
            latent_hw=(height // self.vae_scale, width // self.vae_scale),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            micro_batch=micro_batch,
            devices=devices,
            resample_steps=resample_steps,
            jump_length=jump_length,
            reconstruction_guidance=reconstruction_guidance,
            cache_path=(Path(cache_dir) / self.cache_key(plan, **settings) if cache_dir else None),
            callback_on_call_end=callback_on_call_end,
            callback_on_level_end=callback_on_level_end,
            progress=progress,
        )
        sink = _FrameSink(
            self, plan, output_type=output_type, output_path=output_path, fps=plan.fps or fps
        )
        with sink:
            runner.run(sink)

        # 6. output
        stats = runner.stats
        stats.wall_time_s = time.perf_counter() - started
        stats.output_path = str(output_path) if output_path else None
        stats.cache_dir = str(runner.cache_path) if runner.cache_path else None
        cuda = [torch.device(d) for d in stats.devices if str(d).startswith("cuda")]
        if cuda:
            stats.peak_memory_bytes = max(torch.cuda.max_memory_allocated(d) for d in cuda)
            stats.peak_memory_kind = "cuda-allocated"
        else:
            stats.peak_memory_bytes = _peak_rss_bytes()
        return StoryVideoOutput(
            frames=sink.result(), plan=plan, stats=stats, keyframes=sink.keyframes
        )

    # ------------------------------------------------------------------ seeds and cache
    @staticmethod
    def seed_of(generator: torch.Generator | int | None) -> int:
        if generator is None:
            return int(torch.seed() & ((1 << 63) - 1))
        if isinstance(generator, torch.Generator):
            return int(generator.initial_seed())
        if isinstance(generator, bool) or not isinstance(generator, int):
            raise ValueError(
                f"generator must be one seed or one torch.Generator, got {generator!r}: "
                "every call derives its own noise from it"
            )
        return int(generator)

    def cache_key(self, plan: Plan, **settings: Any) -> str:
        """A hash of everything that determines the output (not batching, devices, resume)."""
        comps: dict[str, Any] = {}
        for name in ("unet", "local_unet", "vae", "text_encoder"):
            module = getattr(self, name, None)
            comps[name] = (
                None
                if module is None
                else {
                    "class": type(module).__name__,
                    "config": _config_dict(module),
                    "weights": _fingerprint(module),
                    "dtype": str(module.dtype),
                }
            )
        comps["scheduler"] = {
            "class": type(self.scheduler).__name__,
            "config": _config_dict(self.scheduler),
        }
        payload = {
            "format": 1,
            "components": comps,
            "plan": plan.to_dict(calls=True),
            "settings": settings,
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:20]


# ----------------------------------------------------------------------------- running a plan
class _PlanRunner:
    """Runs the levels of a plan: batching, devices, cache, callbacks, progress."""

    def __init__(
        self,
        pipe: StoryVideoPipeline,
        *,
        plan: Plan,
        seed: int,
        text_cache: PromptCache,
        negative: torch.Tensor | None,
        latent_hw: tuple[int, int],
        num_inference_steps: int,
        guidance_scale: float,
        micro_batch: int,
        devices: Sequence[str | torch.device] | None,
        resample_steps: int,
        jump_length: int,
        reconstruction_guidance: float,
        cache_path: Path | None,
        callback_on_call_end: Callable | None,
        callback_on_level_end: Callable | None,
        progress: bool,
    ) -> None:
        self.pipe = pipe
        self.plan = plan
        self.seed = seed
        self.text_cache = text_cache
        self.negative = negative
        self.latent_hw = latent_hw
        self.steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.micro_batch = micro_batch
        self.resample_steps = resample_steps
        self.jump_length = jump_length
        self.reconstruction_guidance = reconstruction_guidance
        self.cache_path = cache_path
        self.callback_on_call_end = callback_on_call_end
        self.callback_on_level_end = callback_on_level_end
        self.progress = progress
        self.devices = [torch.device(d) for d in (devices or [pipe.unet.device])]
        self.stats = GenerationStats(
            num_frames=plan.num_frames,
            model_calls=plan.model_calls,
            rounds=plan.rounds,
            devices=[str(d) for d in self.devices],
        )
        # frames in model space, (C, h, w) float32 on the CPU, kept only while still needed
        self.store: dict[int, torch.Tensor] = {}
        self.written: set[int] = set()
        # the last level at which each frame is given to a call as a known frame
        self.last_use: dict[int, int] = {}
        for level in plan.levels:
            for call in level.calls:
                for f in call.known_frames:
                    self.last_use[f] = level.index
        self._unets: dict[tuple[int, str], Any] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- devices
    def unet_on(self, level: int, device: torch.device) -> Any:
        """The level's UNet on ``device``: the pipeline's own copy where it lives, else a copy."""
        base = self.pipe.unet_for_level(level)
        key = (id(base), str(device))
        with self._lock:
            if key not in self._unets:
                same = base.device == device and not any(v is base for v in self._unets.values())
                self._unets[key] = base if same else copy.deepcopy(base).to(device)
            return self._unets[key]

    # ---------------------------------------------------------------- cache
    def cached_calls(self, level: int) -> dict[int, torch.Tensor]:
        if self.cache_path is None or not self.cache_path.exists():
            return {}
        found: dict[int, torch.Tensor] = {}
        for path in sorted(self.cache_path.glob(f"level{level:04d}-*.pt")):
            try:
                data = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # a torn file: recompute those calls
                logger.warning("ignoring unreadable cache file %s: %s", path, exc)
                continue
            found.update({int(k): v for k, v in data.items()})
        return found

    def save_batch(self, batch: _Batch, samples: torch.Tensor) -> None:
        if self.cache_path is None:
            return
        self.cache_path.mkdir(parents=True, exist_ok=True)
        name = f"level{batch.level:04d}-calls{batch.indices[0]:05d}-{batch.indices[-1]:05d}.pt"
        tmp = self.cache_path / (name + ".tmp")
        torch.save({str(i): s.clone() for i, s in zip(batch.indices, samples)}, tmp)
        os.replace(tmp, self.cache_path / name)  # atomic: a crash never leaves half a file

    # ---------------------------------------------------------------- one batch
    def prepare(self, batch: _Batch) -> dict[str, Any]:
        """The batch's inputs, gathered on the main thread before the frames can be released."""
        pipe = self.pipe
        c = pipe.sample_channels
        h, w = self.latent_hw
        f = len(batch.calls[0])
        b = len(batch.calls)
        known = torch.zeros(b, c, f, h, w)
        mask = torch.zeros(b, f)
        generators, noise = [], []
        for i, (idx, call) in enumerate(zip(batch.indices, batch.calls)):
            g = torch.Generator().manual_seed(call_seed(self.seed, batch.level, idx))
            generators.append(g)
            noise.append(torch.randn(c, f, h, w, generator=g))
            for k, (frame, is_known) in enumerate(zip(call.frames, call.known)):
                if is_known:
                    known[i, :, k] = self.store[frame]
                    mask[i, k] = 1.0
        context = torch.stack(
            [self.text_cache.get(list(call.prompts or ())) for call in batch.calls]
        )
        spacing = torch.tensor(
            [(call.frames[-1] - call.frames[0]) / max(len(call) - 1, 1) for call in batch.calls]
        )
        return {
            "noise": torch.stack(noise),
            "known": known,
            "mask": mask,
            "context": context,
            "spacing": spacing,
            "generators": generators,
        }

    def run_batch(
        self, batch: _Batch, inputs: dict[str, Any], device: torch.device
    ) -> tuple[torch.Tensor, int]:
        negative = None if self.negative is None else self.negative.to(device)[None, None]
        tensors = {k: v.to(device) for k, v in inputs.items() if k != "generators"}
        samples, forwards = self.pipe.denoise(
            self.unet_on(batch.level, device),
            generators=inputs["generators"],
            **tensors,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            negative=negative,
            resample_steps=self.resample_steps,
            jump_length=self.jump_length,
            reconstruction_guidance=self.reconstruction_guidance,
        )
        return samples.float().cpu(), forwards

    def batches(self, level: int, todo: list[tuple[int, Call]]) -> list[_Batch]:
        """Calls of equal length, ``micro_batch`` at a time, ordered by their first call.

        A level of an uneven plan alternates call lengths (3 and 4 frames, say); grouping by
        length rather than by run keeps the batches full.
        """
        groups: dict[int, list[tuple[int, Call]]] = {}
        for idx, call in todo:
            groups.setdefault(len(call), []).append((idx, call))
        out = []
        for items in groups.values():
            for start in range(0, len(items), self.micro_batch):
                chunk = items[start : start + self.micro_batch]
                out.append(_Batch(level, [i for i, _ in chunk], [c for _, c in chunk]))
        return sorted(out, key=lambda b: b.indices[0])

    # ---------------------------------------------------------------- levels
    def run(self, sink: _FrameSink) -> None:
        bar = self.pipe.progress_bar(total=self.plan.model_calls) if self.progress else None
        # one worker thread per device, so a device runs its batches one after another
        executors = [ThreadPoolExecutor(max_workers=1) for _ in self.devices]
        try:
            for level in self.plan.levels:
                t0 = time.perf_counter()
                cached = self.cached_calls(level.index)
                todo = [(i, c) for i, c in enumerate(level.calls) if i not in cached]
                batches = self.batches(level.index, todo)
                futures: list[Future] = [
                    executors[k % len(self.devices)].submit(
                        self.run_batch,
                        batch,
                        self.prepare(batch),
                        self.devices[k % len(self.devices)],
                    )
                    for k, batch in enumerate(batches)
                ]
                pending = iter(zip(batches, futures))
                results = {i: (s, True) for i, s in cached.items() if i < len(level.calls)}
                # consume in plan order, so that frames stream out in order
                for idx, call in enumerate(level.calls):
                    while idx not in results:
                        batch, future = next(pending)
                        samples, forwards = future.result()
                        self.stats.unet_forwards += forwards
                        self.stats.calls_run += len(batch.calls)
                        self.save_batch(batch, samples)
                        results.update({i: (s, False) for i, s in zip(batch.indices, samples)})
                    sample, from_cache = results.pop(idx)
                    self.stats.calls_from_cache += int(from_cache)
                    self.finish_call(level.index, idx, call, sample, from_cache, sink)
                    if bar is not None:
                        bar.update(1)
                self.stats.level_times_s.append(time.perf_counter() - t0)
                self.release(level.index)
                if self.callback_on_level_end is not None:
                    self.callback_on_level_end(self.pipe, level.index)
            sink.offer(self.store, flush=True)
        finally:
            for ex in executors:
                ex.shutdown(wait=True, cancel_futures=True)
            if bar is not None:
                bar.close()

    def finish_call(
        self,
        level: int,
        idx: int,
        call: Call,
        sample: torch.Tensor,
        from_cache: bool,
        sink: _FrameSink,
    ) -> None:
        # a frame is made once and never changed: later calls get it back exactly as known
        for k, frame in enumerate(call.frames):
            if not call.known[k] and frame not in self.store and frame not in self.written:
                self.store[frame] = sample[:, k].clone()
        if self.callback_on_call_end is not None:
            self.callback_on_call_end(self.pipe, CallResult(level, idx, call, sample, from_cache))
        before = sink.next
        sink.offer(self.store)
        self.written.update(range(before, sink.next))
        # frames this level still gives to its later calls were gathered when it started
        self.release(level)
        self.stats.peak_frames_held = max(self.stats.peak_frames_held, len(self.store))

    def release(self, level: int) -> None:
        """Forget frames already written that no later level needs."""
        done = [f for f in self.written if f in self.store and self.last_use.get(f, -1) <= level]
        for frame in done:
            del self.store[frame]


# ----------------------------------------------------------------------------- output
class _FrameSink:
    """Decodes final frames in order and streams them to a file and/or keeps them."""

    def __init__(
        self,
        pipe: StoryVideoPipeline,
        plan: Plan,
        *,
        output_type: str | None,
        output_path: str | os.PathLike | None,
        fps: float | None,
        chunk: int = 16,
    ) -> None:
        self.pipe = pipe
        self.plan = plan
        self.output_type = output_type
        self.output_path = output_path
        self.fps = fps or 8.0
        self.chunk = chunk
        self.next = 0
        self.kept: list[Any] = []
        self.writer: Any = None
        self.keyframe_ids = (
            {f for c in plan.levels[0].calls for f in c.new_frames} if plan.levels else set()
        )
        self.keyframes: dict[int, np.ndarray] = {}

    def __enter__(self) -> _FrameSink:
        if self.output_path is not None:
            from storygen.export import VideoWriter

            Path(self.output_path).parent.mkdir(parents=True, exist_ok=True)
            self.writer = VideoWriter(self.output_path, fps=self.fps)
            self.writer.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.writer is not None:
            self.writer.__exit__(*exc)

    def offer(self, store: dict[int, torch.Tensor], *, flush: bool = False) -> None:
        """Emit the frames from ``next`` on that are final, in order, a chunk at a time."""
        end = self.next
        while end < self.plan.num_frames and end in store:
            end += 1
        if end - self.next < self.chunk and end < self.plan.num_frames and not flush:
            return
        for a in range(self.next, end, self.chunk):
            b = min(a + self.chunk, end)
            self.emit(a, torch.stack([store[f] for f in range(a, b)]))
        self.next = end

    def emit(self, start: int, samples: torch.Tensor) -> None:
        """Frames ``start, start + 1, ...`` in model space: (n, C, h, w)."""
        if self.output_type == "latent":
            self.kept.append(samples.clone())
        pixels = self.pipe.decode_frames(samples)
        frames = to_uint8(pixels)
        for k, frame in enumerate(frames):
            if start + k in self.keyframe_ids:
                self.keyframes[start + k] = frame
        if self.writer is not None:
            self.writer.write(frames)
        if self.output_type in ("np", "pil"):
            self.kept.append(frames)
        elif self.output_type == "pt":
            self.kept.append(((pixels + 1) / 2).clamp(0, 1))

    def result(self) -> Any:
        if self.output_type is None:
            return None
        if self.output_type in ("pt", "latent"):
            return torch.cat(self.kept)
        frames = np.concatenate(self.kept)
        if self.output_type == "pil":
            from PIL import Image

            return [Image.fromarray(f) for f in frames]
        return frames
