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
  training-free by :class:`TrainingFreeStoryPipeline`: the known frames, noised to the current
  step, replace their positions at every step, with RePaint-style resampling to blend the
  seams (see :mod:`storygen.sampling`).

Both condition each frame on its own prompt (:func:`storygen.models.unet3d_forward`).

This module is the glue, as a diffusers pipeline is: inputs, plan, prompts, one batch's
latents and its denoising, decoding. Running the levels is :mod:`storygen.runner`'s job, the
sampler math :mod:`storygen.sampling`'s, the disk cache :mod:`storygen.cache`'s and writing
frames :mod:`storygen.sink`'s. (Over 500 lines because :class:`StoryVideoPipeline` is one
diffusers pipeline of about 440, and :class:`TrainingFreeStoryPipeline` belongs beside it: the
base class's ``from_pretrained`` returns it for a ModelScope-layout folder.)
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import logging
import math
import numbers
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput

from storygen.accel import (
    beside_sampling,
    check_render_speed,
    compiled_call,
    is_compiled,
)
from storygen.attention import ContextTable
from storygen.cache import CallCache, cache_key
from storygen.models import MaskedUNet3D
from storygen.plan import (
    AUTOREGRESSIVE,
    Plan,
    autoregressive_plan,
    build_plan,
    check_policy_options,
    plan_story,
    segment_progress,
    with_prompts,
)
from storygen.plan.limits import check_length
from storygen.runner import CallBatch, CallResult, GenerationStats, PlanRunner
from storygen.sampling import CallInputs, check_scheduler, guided_output, sample_calls
from storygen.script import StoryScript
from storygen.settings import (
    BUILTIN_DEFAULTS,
    RenderSettings,
    _check_sampling_value,
    check_frame_size,
    read_sampling_json,
    write_sampling_json,
)
from storygen.sink import OUTPUT_TYPES, FrameSink
from storygen.text import PromptCache
from storygen.training_free import check_model_files, is_t2v_layout

logger = logging.getLogger(__name__)


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


#: set while a folder trained as text-to-video is exported (which loads it as it is, masked):
#: ``StoryVideoPipeline.from_pretrained`` then loads it as it is, not exports it again
_LOAD_AS_SAVED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "storygen_load_as_saved", default=False
)


@contextlib.contextmanager
def loading_as_saved() -> Any:
    """Within the block ``StoryVideoPipeline.from_pretrained`` loads a masked-layout folder
    trained as text-to-video as the masked pipeline its files describe (for the export)."""
    token = _LOAD_AS_SAVED.set(True)
    try:
        yield
    finally:
        _LOAD_AS_SAVED.reset(token)


#: ``__call__``'s output with ``return_dict=False``: (frames, plan, stats, keyframes)
StoryVideoTuple = tuple[Any, Plan, GenerationStats, dict[int, np.ndarray]]


def call_seed(seed: int, level: int, index: int) -> int:
    """A per-call seed from (seed, level, call index): independent of batching and devices."""
    digest = hashlib.sha256(f"storygen:{seed}:{level}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _is_int(value: Any) -> bool:
    """An integer of any kind (Python's, numpy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    """A finite real number of any kind (Python's, numpy's), not a bool."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
    )


def _plain(value: Any) -> Any:
    """A numpy integer or float as Python's int or float; anything else as it is."""
    if _is_int(value) and not isinstance(value, int):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _check_seed(generator: Any) -> None:
    if not _is_int(generator):
        raise ValueError(
            f"generator must be one seed or one torch.Generator, got {generator!r}: "
            "every call derives its own noise from it"
        )


def _shown(value: Any) -> str:
    """A value for a message: its repr, cut short, and its type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


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

    #: the folder's recommended sampling settings (``sampling.json``): defaults of ``__call__``;
    #: a dict of each pipeline's own (set in ``__init__``), never shared between pipelines
    sampling: dict[str, Any]

    #: training-free defaults (RePaint), for any UNet but a :class:`MaskedUNet3D`, whatever
    #: the pipeline class: repeat each window of ``jump_length`` steps this many times; a
    #: masked model needs no resampling (1 and 1)
    default_resample_steps = 2
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
        self.sampling = {}
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
        :class:`TrainingFreeStoryPipeline` when called on this class, and so does a folder
        whose UNet was last trained as plain text-to-video (``storygen train
        --text-to-video 1``), as :func:`storygen.loading.load_pipeline` loads it. A missing config or
        weight file raises FileNotFoundError naming it.
        """
        path = Path(pretrained_model_name_or_path)
        if not path.is_dir():
            raise FileNotFoundError(f"model folder {path} does not exist")
        check_model_files(path)
        if cls is StoryVideoPipeline and is_t2v_layout(path):
            cls = TrainingFreeStoryPipeline
        elif cls is StoryVideoPipeline and "unet" not in kwargs and not _LOAD_AS_SAVED.get():
            # a masked-layout folder trained as plain text-to-video loads as load_pipeline
            # loads it: exported, as a TrainingFreeStoryPipeline (imported here: loading
            # imports this module)
            from storygen.loading import load_text_to_video_trained, trained_as_text_to_video

            if trained_as_text_to_video(path):
                return load_text_to_video_trained(path, kwargs)
        pipe = super().from_pretrained(str(path), **kwargs)
        pipe.sampling = read_sampling_json(path)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:  # type: ignore[override]
        """The diffusers folder, plus the recommended sampling settings (``sampling.json``)."""
        super().save_pretrained(save_directory, **kwargs)
        if self.sampling:
            write_sampling_json(Path(save_directory), self.sampling)

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
        micro_batch: int | str,
        output_type: str | None,
        resample_steps: int,
        jump_length: int,
        generator: torch.Generator | int | None = None,
        reconstruction_guidance: float = 0.0,
        negative_prompt: str | None = "",
    ) -> None:
        if not isinstance(prompt, (str, list, tuple, StoryScript)) or (
            isinstance(prompt, (str, list, tuple)) and len(prompt) == 0
        ):
            raise ValueError(
                "prompt must be a string, a list of per-frame prompts or a StoryScript, "
                f"got {_shown(prompt)}"
            )
        if isinstance(prompt, (list, tuple)):
            if not all(isinstance(p, str) for p in prompt):
                raise ValueError("a prompt list must hold one string per frame")
            if num_frames is not None and len(prompt) != num_frames:
                raise ValueError(f"got {len(prompt)} per-frame prompts for num_frames={num_frames}")
        if isinstance(prompt, str) and num_frames is None:
            raise ValueError("num_frames is required with a single prompt string")
        if num_frames is not None:
            # checked before anything is allocated for the frames
            if not _is_int(num_frames) or num_frames < 1:
                raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
            check_length(int(num_frames))
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError(
                f"negative_prompt must be a string or None, got {_shown(negative_prompt)}"
            )
        if micro_batch != "auto" and (
            not _is_int(micro_batch) or micro_batch < 1  # type: ignore[operator]
        ):
            raise ValueError(f"micro_batch must be an integer >= 1 or 'auto', got {micro_batch!r}")
        for name, value, low in (
            ("frames_per_call", frames_per_call, 3),
            ("num_inference_steps", num_inference_steps, 1),
            ("resample_steps", resample_steps, 1),
            ("jump_length", jump_length, 1),
        ):
            if not _is_int(value) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        # the same rule as the CLI's and sampling.json's: a finite number >= 0
        _check_sampling_value("guidance_scale", guidance_scale)
        # positive integers no larger than the CLI's cap, before anything is allocated
        check_frame_size(_plain(height), _plain(width))
        factor = self.vae_scale
        if height % factor or width % factor or height < factor or width < factor:
            raise ValueError(
                f"height and width must be positive multiples of {factor}, got {height}x{width}"
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            _check_seed(generator)
        if not (_is_real(reconstruction_guidance) and reconstruction_guidance >= 0):
            raise ValueError(
                f"reconstruction_guidance must be a number >= 0, got {reconstruction_guidance!r}"
            )

    @staticmethod
    def seed_of(generator: torch.Generator | int | None) -> int:
        """The run's seed: ``generator`` itself, a Generator's initial seed, or a fresh one."""
        if generator is None:  # drawn without touching torch's global generator
            return int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)
        if isinstance(generator, torch.Generator):
            return int(generator.initial_seed())
        _check_seed(generator)
        return int(generator)

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
        if isinstance(prompt, str):
            if not _is_int(num_frames) or num_frames < 1:  # type: ignore[operator]
                raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
            check_length(int(num_frames))  # type: ignore[arg-type]
            prompts = [prompt] * int(num_frames)  # type: ignore[arg-type]
        else:
            prompts = list(prompt)
        check_policy_options(policy, depth, overlap)
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
    def encode_prompt(
        self, prompts: str | Sequence[str], negative_prompt: str | None = ""
    ) -> tuple[PromptCache, torch.Tensor]:
        """Encode every distinct prompt once; returns the table and the negative embedding.

        ``prompts``: one prompt (a string) or several; ``negative_prompt`` None is ``""``."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if negative_prompt is None:
            negative_prompt = ""
        if not isinstance(negative_prompt, str):
            raise ValueError(
                f"negative_prompt must be a string or None, got {_shown(negative_prompt)}"
            )
        cache = PromptCache(self.tokenizer, self.text_encoder)
        cache.add(prompts)
        negative = cache.get([negative_prompt])[0]
        return cache, negative

    # ------------------------------------------------------------------ one batch of calls
    def prepare_latents(
        self,
        batch: CallBatch,
        *,
        settings: RenderSettings,
        frames: Mapping[int, torch.Tensor],
        text: PromptCache,
    ) -> CallInputs:
        """A batch's inputs: each call's starting noise, from its own generator seeded with
        :func:`call_seed`; the frames ``frames`` gives it and their mask; its per-frame
        prompt embeddings (from ``text``), frame spacing and each frame's progress through its
        prompt's segment."""
        c = self.sample_channels
        h, w = settings.height // self.vae_scale, settings.width // self.vae_scale
        f = len(batch.calls[0])
        b = len(batch.calls)
        known = torch.zeros(b, c, f, h, w)
        mask = torch.zeros(b, f)
        generators, noise = [], []
        for i, (idx, call) in enumerate(zip(batch.indices, batch.calls)):
            g = torch.Generator().manual_seed(call_seed(settings.seed, batch.level, idx))
            generators.append(g)
            noise.append(torch.randn(c, f, h, w, generator=g))
            for k, (frame, is_known) in enumerate(zip(call.frames, call.known)):
                if is_known:
                    known[i, :, k] = frames[frame]
                    mask[i, k] = 1.0
        # the render's distinct prompts once (every batch the same table, so a compiled graph
        # that reads it sees one shape in the render), each frame's row in it, their gather
        prompts = [list(call.prompts or ()) for call in batch.calls]
        table = None
        if f and all(len(p) == f for p in prompts):
            text.add(p for row in prompts for p in row)
            index = [[text.index[p] for p in row] for row in prompts]
            table = ContextTable(text.table(), torch.tensor(index, dtype=torch.long))
            context = table.table[table.rows]
        else:
            context = torch.stack([text.get(list(call.prompts or ())) for call in batch.calls])
        spacing = torch.tensor(
            [(call.frames[-1] - call.frames[0]) / max(len(call) - 1, 1) for call in batch.calls]
        )
        progress = torch.tensor(
            [call.progress or segment_progress(call.prompts or [""] * f) for call in batch.calls],
            dtype=torch.float32,
        )
        return CallInputs(
            noise=torch.stack(noise),
            known=known,
            mask=mask,
            context=context,
            spacing=spacing,
            generators=generators,
            progress=progress,
            table=table,
        )

    @torch.no_grad()
    def denoise(
        self,
        unet: Any,
        inputs: CallInputs,
        *,
        negative: torch.Tensor | None,
        settings: RenderSettings,
        callback_on_step_end: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Sample one batch of calls; returns the clean samples and the UNet evaluations.

        ``inputs`` lie on ``unet``'s device; ``negative`` is the unconditional embedding (None:
        no classifier-free guidance). Known frames, noised to the current step, replace their
        positions before every model evaluation and the exact known frames replace them at the
        end (:func:`storygen.sampling.sample_calls`). ``callback_on_step_end`` runs after every
        denoising step.
        """

        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return guided_output(unet, x, t, inputs, settings.guidance_scale, negative)

        return sample_calls(
            copy.deepcopy(self.scheduler),
            model,
            inputs,
            num_inference_steps=settings.num_inference_steps,
            resample_steps=settings.resample_steps,
            jump_length=settings.jump_length,
            reconstruction_guidance=settings.reconstruction_guidance,
            callback_on_step_end=callback_on_step_end,
        )

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
    def decode(self, samples: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """(N, C, h, w) model space -> (N, 3, H, W) pixels in [-1, 1], ``chunk`` at a time."""
        if self.vae is None:
            return samples.float().clamp(-1, 1)
        vae = self.vae
        # a compiled decoder (the ``vdec`` speed-up) runs one static shape: a short last chunk
        # is padded with copies of its last frame, which are dropped again
        static = is_compiled(getattr(vae, "decoder", None))
        out = []
        # on CUDA, on a stream of its own: not queued behind the UNet passes of a batch
        # that is running (storygen.accel.beside_sampling)
        caller = torch.cuda.current_stream(samples.device) if samples.is_cuda else None
        with beside_sampling(vae.device) as stream:
            if caller is not None and stream is not None:  # samples made on the caller's
                stream.wait_stream(caller)
                samples.record_stream(stream)
            for start in range(0, samples.shape[0], chunk):
                z = samples[start : start + chunk].to(device=vae.device, dtype=vae.dtype)
                n = z.shape[0]
                if static and n < chunk:
                    z = torch.cat([z, z[-1:].expand(chunk - n, *z.shape[1:])])
                z = z / vae.config.scaling_factor
                with compiled_call(vae.decoder, z) if static else contextlib.nullcontext():
                    x = vae.decode(z).sample[:n]
                out.append(x.float().cpu())
        return torch.cat(out).clamp(-1, 1)

    #: the name the tests (and earlier callers) use
    decode_frames = decode

    # ------------------------------------------------------------------ main
    @overload
    def __call__(
        self,
        prompt: Any,
        num_frames: int | None = None,
        *,
        return_dict: Literal[False],
        **kwargs: Any,
    ) -> StoryVideoTuple: ...

    @overload
    def __call__(
        self,
        prompt: Any,
        num_frames: int | None = None,
        *,
        return_dict: Literal[True] = True,
        **kwargs: Any,
    ) -> StoryVideoOutput: ...

    @torch.no_grad()  # type: ignore[misc]
    def __call__(
        self,
        prompt: Any,
        num_frames: int | None = None,
        *,
        fps: float | None = None,
        frames_per_call: int | None = None,
        depth: int | None = None,
        policy: str = "stretch",
        overlap: int = 1,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | None = "",
        generator: torch.Generator | int | None = None,
        height: int | None = None,
        width: int | None = None,
        micro_batch: int | str = "auto",
        output_type: str | None = "np",
        output_path: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        devices: Sequence[str | torch.device] | str | torch.device | None = None,
        resample_steps: int | None = None,
        jump_length: int | None = None,
        reconstruction_guidance: float = 0.0,
        callback_on_call_end: Callable[[StoryVideoPipeline, CallResult], None] | None = None,
        callback_on_level_end: Callable[[StoryVideoPipeline, int], None] | None = None,
        progress: bool = True,
        compile: str = "auto",
        cudnn_autotune: bool = True,
        speedups: str | Sequence[str] = "auto",
        return_dict: bool = True,
    ) -> StoryVideoOutput | StoryVideoTuple:
        """Render a story.

        ``prompt``: one string for every frame, a list with one prompt per frame, or a
        :class:`~storygen.script.StoryScript` (``fps`` then defaults to the script's and
        ``num_frames`` to its duration × fps). ``policy``: ``"stretch"`` / ``"trim"``
        (hierarchical, see :mod:`storygen.plan`) or ``"autoregressive"`` (sliding windows
        given ``overlap`` frames: the baseline). ``generator``: a seed, or a
        ``torch.Generator`` whose initial seed is used; every call derives its own noise from
        it. ``num_inference_steps``, ``guidance_scale``, ``frames_per_call``, ``height`` and
        ``width`` default to the model folder's ``sampling.json``, else 25 steps, guidance 3,
        16 frames per call and the model's size. ``guidance_scale`` 1 turns classifier-free
        guidance off. ``micro_batch``: calls per forward pass; ``"auto"`` is 16 on the CPU
        and, on CUDA, as many as half the free memory holds once a batch has shown what a
        call takes (at most 128; the first level runs at 16). ``devices``: spread the calls of a level over these devices (one model
        copy each). ``cache_dir``: keep each finished batch of calls on disk and resume from
        it. ``output_path``: stream frames to a video file (mp4 / gif) as soon as they are
        final; with ``output_type=None`` no frames are kept in memory.
        ``resample_steps`` / ``jump_length``: RePaint resampling of calls with known frames
        (default on for a plain text-to-video UNet). ``reconstruction_guidance``: weight of a
        gradient step pulling the predicted clean sample towards the known frames (Ho et al.
        2022); it back-propagates through the UNet, so each step costs about three forwards.
        ``cudnn_autotune``: cuDNN's autotuner for the render's convolutions on CUDA devices
        (:func:`storygen.accel.cudnn_autotune`). ``compile``: ``"on"`` compiles the UNet with
        ``torch.compile`` for the batch shapes the render runs often enough to repay it,
        ``"all"`` for every shape, ``"regional"`` for every shape with the UNet's repeated
        blocks compiled one by one, ``"aot"`` for every shape ahead of time (AOTInductor
        packages on disk, which a later process loads without tracing; where AOTInductor
        cannot load them, as ``"pre"``, with a warning), ``"pre"`` for every shape traced
        ahead of time (dynamo's graphs compiled and saved to disk, loaded by a later process
        without tracing; a UNet dynamo cannot trace whole compiles in process as ``"all"``,
        with a warning), ``"auto"`` (the
        default) is off on a CPU and on CUDA compiles the shapes ``"on"`` would, the repeated
        blocks one by one as ``"regional"`` does (whole passes with the ``cgraph`` speed-up or
        a UNet without those blocks; see :mod:`storygen.accel`). ``speedups``: the UNet speed-ups
        (:data:`storygen.accel.SPEEDUPS`), ``"auto"`` for the device's defaults, or ``"none"``.
        ``return_dict=False``: the output as a tuple, as diffusers pipelines give it:
        ``(frames, plan, stats, keyframes)`` (``frames`` first even where it is None).
        """
        started = time.perf_counter()

        # 1. check inputs, with the model's defaults filled in (its sampling.json, else the
        # built-in ones); one settings object from here on
        settings, frames_per_call = self._settings(
            prompt,
            num_frames,
            generator=generator,
            output_type=output_type,
            frames_per_call=frames_per_call,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            resample_steps=resample_steps,
            jump_length=jump_length,
            reconstruction_guidance=reconstruction_guidance,
            negative_prompt=negative_prompt,
            micro_batch=micro_batch,
            devices=devices,
            progress=progress,
            compile=compile,
            cudnn_autotune=cudnn_autotune,
            speedups=speedups,
        )

        # 2. plan: which call makes which frames, every frame with its prompt
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

        # 3. encode prompts, each distinct one once
        t0 = time.perf_counter()
        text, negative = self.encode_prompt(list(plan.prompts or ()), settings.negative_prompt)
        text_s = time.perf_counter() - t0

        # 4. the levels: global keyframes, then the local levels (finished calls kept on disk);
        # 5. frames: decoded and written (or kept) in order, as the levels make them final;
        # 6. the output: the frames, the plan and the run's stats
        out = self._render(
            plan,
            settings,
            (text, negative),
            cache_dir=cache_dir,
            output_type=output_type,
            output_path=output_path,
            fps=plan.fps or fps,
            callbacks=(callback_on_call_end, callback_on_level_end),
            started=started,
        )
        out.stats.set_stages(text=text_s)
        if not return_dict:
            return (out.frames, out.plan, out.stats, out.keyframes)
        return out

    def _settings(
        self,
        prompt: Any,
        num_frames: int | None,
        *,
        generator: torch.Generator | int | None,
        output_type: str | None,
        frames_per_call: int | None,
        num_inference_steps: int | None,
        guidance_scale: float | None,
        height: int | None,
        width: int | None,
        resample_steps: int | None,
        jump_length: int | None,
        reconstruction_guidance: float,
        negative_prompt: str | None,
        micro_batch: int | str,
        devices: Sequence[str | torch.device] | str | torch.device | None,
        progress: bool,
        compile: str = "auto",
        cudnn_autotune: bool = True,
        speedups: str | Sequence[str] = "auto",
    ) -> tuple[RenderSettings, int]:
        """The render's settings and frames per call, the model's defaults filled in (its
        sampling.json, else the built-in ones), after :meth:`check_inputs`. numpy numbers are
        taken as Python's; one device (a string or ``torch.device``) is a list of one."""
        if isinstance(devices, (str, torch.device)):
            devices = [devices]
        (
            num_frames,
            generator,
            frames_per_call,
            num_inference_steps,
            guidance_scale,
            height,
            width,
            resample_steps,
            jump_length,
            reconstruction_guidance,
            micro_batch,
        ) = map(
            _plain,
            (
                num_frames,
                generator,
                frames_per_call,
                num_inference_steps,
                guidance_scale,
                height,
                width,
                resample_steps,
                jump_length,
                reconstruction_guidance,
                micro_batch,
            ),
        )
        recommended = {**BUILTIN_DEFAULTS, **self.sampling}
        if num_inference_steps is None:
            num_inference_steps = recommended["num_inference_steps"]
        if guidance_scale is None:
            guidance_scale = recommended["guidance_scale"]
        if frames_per_call is None:
            frames_per_call = recommended["frames_per_call"]
        default_h, default_w = self.default_size()
        # None takes the default; a 0 given is refused by check_inputs, not replaced
        if height is None:
            height = recommended["height"] or default_h
        if width is None:
            width = recommended["width"] or default_w
        # keyed on the UNet, not the pipeline class: an AutoregressiveStoryPipeline (or a
        # StoryVideoPipeline) over a text-to-video UNet resamples as the training-free one
        training_free = not isinstance(self.unet, MaskedUNet3D)
        if resample_steps is None:
            resample_steps = self.default_resample_steps if training_free else 1
        if jump_length is None:
            jump_length = self.default_jump_length if training_free else 1
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
            generator,
            reconstruction_guidance,
            negative_prompt,
        )
        check_scheduler(self.scheduler)
        device_type = torch.device((devices or [self.unet.device])[0]).type
        check_render_speed(compile, speedups, device_type)  # ValueError: not a choice
        settings = RenderSettings(
            seed=self.seed_of(generator),
            negative_prompt=negative_prompt or "",
            num_inference_steps=num_inference_steps,
            guidance_scale=float(guidance_scale),
            height=height,
            width=width,
            resample_steps=resample_steps,
            jump_length=jump_length,
            reconstruction_guidance=reconstruction_guidance,
            micro_batch=micro_batch,
            devices=tuple(devices) if devices else None,
            progress=progress,
            compile=compile,
            cudnn_autotune=cudnn_autotune,
            speedups=speedups if isinstance(speedups, str) else tuple(speedups),
        )
        return settings, frames_per_call

    def _render(
        self,
        plan: Plan,
        settings: RenderSettings,
        prompts: tuple[Any, Any],
        *,
        cache_dir: str | os.PathLike | None,
        output_type: str | None,
        output_path: str | os.PathLike | None,
        fps: float | None,
        callbacks: tuple[Callable | None, Callable | None],
        started: float,
    ) -> StoryVideoOutput:
        """Run ``plan``'s levels (``prompts``: the encoded prompts and negative prompt) and
        gather the frames and the run's stats."""
        text, negative = prompts
        callback_on_call_end, callback_on_level_end = callbacks
        cache = CallCache(Path(cache_dir) / cache_key(self, plan, settings)) if cache_dir else None
        runner = PlanRunner(
            self,
            plan,
            settings,
            text_cache=text,
            negative=negative if settings.guidance_scale != 1.0 else None,
            cache=cache,
            callback_on_call_end=callback_on_call_end,
            callback_on_level_end=callback_on_level_end,
        )
        # frames: decoded and written (or kept) in order, as the levels make them final
        sink = FrameSink(
            plan,
            decode=self.decode,
            output_type=output_type,
            output_path=output_path,
            fps=fps,
        )
        with sink:
            runner.run(sink)

        # the output
        stats = runner.stats
        ended = time.perf_counter()
        stats.wall_time_s = ended - started
        if runner.sampling_ended is not None:
            stats.tail_s = ended - runner.sampling_ended
        stats.output_path = str(output_path) if output_path else None
        stats.cache_dir = str(cache.path) if cache is not None else None
        stats.record_peak_memory()
        stats.set_stages(decode=sink.decode_s, write=sink.write_wait_s)
        return StoryVideoOutput(
            frames=sink.result(), plan=plan, stats=stats, keyframes=sink.keyframes
        )


class TrainingFreeStoryPipeline(StoryVideoPipeline):
    """:class:`StoryVideoPipeline` over an off-the-shelf text-to-video UNet.

    Differs only in ``masked`` (always False); RePaint resampling is on (each step denoised
    twice) as it is for any pipeline over a UNet that is not a :class:`MaskedUNet3D`.
    Load with ``TrainingFreeStoryPipeline.from_pretrained(folder)`` on a folder that
    ``TextToVideoSDPipeline.save_pretrained`` wrote (e.g. ModelScope's ``text-to-video-ms-1.7b``);
    ``StoryVideoPipeline.from_pretrained`` returns one for such a folder, which is why the two
    classes share this module.
    """

    default_resample_steps = 2
    default_jump_length = 1

    @property
    def masked(self) -> bool:
        return False
