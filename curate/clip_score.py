"""Caption–frame agreement with any Hugging Face CLIP checkpoint.

:class:`ClipScorer` loads a ``transformers.CLIPModel`` with its tokenizer and image
preprocessing config from a local folder (or a hub id where the hub is reachable) and exposes
the batched pure functions the Beam pipeline wraps in ``RunInference``:

- :meth:`ClipScorer.embed_images` — ``(N, H, W, 3) uint8`` frames → ``(N, D)`` float32, unit norm
- :meth:`ClipScorer.embed_texts` — ``list[str]`` → ``(N, D)`` float32, unit norm (LRU-cached)
- :meth:`ClipScorer.scene_embeddings` — per scene, its sampled frames tiled in time order
  (:func:`storyboard`) → ``(N, D)``: what happens over the scene, motion included
- :meth:`ClipScorer.score_record` — a clip record with sampled ``frames`` → the same record
  with ``caption_score``, ``frame_scores`` and ``embedding`` (and ``scene_embedding``) filled in

The caption score of a scene is the cosine between the caption and each sampled frame,
aggregated over frames (mean, min, max or median). A source caption that narrates several
events ("a red circle ..., then a blue square ...") only describes one of them per scene, so
by default each scene is scored against the caption fragment that fits it best (the whole
caption is one of the candidates).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from schemas.tables import DROPPED, UNUSABLE_CAPTION_REASONS

from .captions import clean_caption, split_caption, truncate_to_tokens
from .choices import AGGREGATES, CAPTION_MODES, DTYPES, FP8_SCOPES
from .errors import CurateError, ModelFolderError
from .models import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_MODEL,
    SCORING_FILE,
    check_clip_model,
    read_scoring,
)
from .step import Step, check_choice, check_positive
from .storyboard import STORYBOARD_GRID, storyboard

logger = logging.getLogger(__name__)

#: ``compile`` choices: ``auto`` compiles the image tower on CUDA once a job has proved long
#: (:data:`COMPILE_AFTER_FRAMES`); ``on`` from the first batch; ``off`` never. Measured on one
#: H200 (``benchmarks/quality.py --device cuda --real-size-only``, ViT-L/14 shape, bf16, batch
#: 1,024, preprocessing included): 2,334 frames/s eager, 2,871 compiled (59 % of the chip's
#: measured bf16 matrix rate), embeddings at cosine >= 0.9999 of eager
COMPILE_CHOICES: tuple[str, ...] = ("auto", "on", "off")
#: frames a CUDA scorer embeds eagerly before ``compile="auto"`` compiles its image tower: a
#: job this long repays the compile (about a minute cold, seconds from the on-disk cache)
COMPILE_AFTER_FRAMES = 50_000
#: bounds of the batch a CUDA scorer sizes from free memory (frames per forward pass)
AUTO_BATCH = (64, 1024)


def aggregate_scores(scores: np.ndarray, how: str) -> float:
    check_choice("aggregate", how, AGGREGATES)
    if scores.size == 0:
        raise ValueError("cannot aggregate an empty score list")
    fn: Any = {"mean": np.mean, "min": np.min, "max": np.max, "median": np.median}[how]
    return float(fn(scores))


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


class ClipScorer(Step[dict, dict]):
    """Score clip captions against their sampled frames with a CLIP model.

    Settings (keyword-only): ``model`` (folder or hub id, default the shipped shapes-world
    CLIP), ``device`` ("cpu", "cuda", "cuda:1"), ``dtype`` ("auto": bfloat16 on CUDA, float32
    on the CPU; "float32"; "bfloat16" / "float16" on CUDA), ``batch_size`` (frames per forward
    pass; ``None``: 64 on the CPU, sized from free memory on CUDA), ``compile`` ("auto": on
    CUDA, ``torch.compile`` the image tower with static shapes once
    :data:`COMPILE_AFTER_FRAMES` frames have been embedded; "on"; "off"), ``fp8`` (CUDA,
    compute capability 8.9+, needs ``torchao`` and ``dtype`` bfloat16; "auto": the encoder
    layers' MLPs in float8 with per-row scales from the moment the tower is compiled, where the
    GPU, torchao and the dtype allow, else nothing; "mlp": the same from the first batch;
    "all": every linear layer; "off". On one H200, ViT-L/14 shape: "mlp" 3,374 frames/s,
    1.42x eager bf16, embeddings at cosine >= 0.9993 of bf16; "all" 3,595 frames/s but
    cosine 0.9984, so it is opt-in), ``aggregate`` (over frames),
    ``caption_mode`` ("best_fragment" or "whole"), ``text_cache_size`` (distinct texts whose
    embeddings are kept), ``num_threads`` (torch CPU threads; ``None`` leaves torch's default),
    ``storyboard`` (also embed each scene's sampled frames tiled in time order, which is what
    lets re-captioning read motion: ``None`` does so when the model folder's ``scoring.json``
    declares a storyboard grid, as the shipped model's does; ``True`` / ``False`` force it).

    One scorer may serve several threads (the text cache and the tower's state are locked).
    """

    stage = "clip-score"

    def __init__(
        self,
        *,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int | None = None,
        compile: str = "auto",
        fp8: bool | str = "auto",
        aggregate: str = "mean",
        caption_mode: str = "best_fragment",
        text_cache_size: int = 4096,
        num_threads: int | None = None,
        storyboard: bool | None = None,
    ) -> None:
        if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        check_choice("dtype", dtype, (*DTYPES, "auto"))
        if dtype == "auto":
            dtype = "float32" if device == "cpu" else "bfloat16"
        if dtype != "float32" and device == "cpu":
            raise ValueError(f"dtype {dtype!r} needs a CUDA device; use float32 on the CPU")
        if batch_size is not None:
            check_positive("batch_size", batch_size)
        check_choice("compile", compile, COMPILE_CHOICES)
        fp8 = {False: "off", True: "all"}.get(fp8, fp8) if isinstance(fp8, bool) else fp8
        check_choice("fp8", fp8, FP8_SCOPES)
        if fp8 in ("mlp", "all") and device == "cpu":
            raise ValueError("fp8 needs a CUDA device (compute capability 8.9 or newer)")
        if fp8 in ("mlp", "all") and dtype != "bfloat16":
            raise ValueError(
                f"fp8 {fp8!r} needs dtype 'bfloat16' (float8 with per-row scales converts "
                f"bfloat16 weights only), got dtype {dtype!r}; use dtype 'bfloat16' or fp8 'off'"
            )
        check_choice("aggregate", aggregate, AGGREGATES)
        check_choice("caption_mode", caption_mode, CAPTION_MODES)
        check_positive("text_cache_size", text_cache_size, allow_zero=True)
        if num_threads is not None:
            check_positive("num_threads", num_threads)
        self.model_path = os.fspath(model)
        self.device = device
        self.dtype = dtype
        # None: sized in setup() (from free memory on CUDA)
        self.batch_size = int(batch_size) if batch_size is not None else 64
        self._auto_batch = batch_size is None and device != "cpu"
        self.compile = compile
        self.fp8 = fp8
        # what runs in float8 now ("auto" turns to "mlp" when the tower is compiled)
        self.fp8_active = fp8 if fp8 in ("mlp", "all") else "off"
        self._image_fn: Any = None  # the compiled image tower, once compiled
        self._fp8_error: ModelFolderError | None = None  # a float8 conversion that failed
        self.frames_embedded = 0
        self.aggregate = aggregate
        self.caption_mode = caption_mode
        self.text_cache_size = int(text_cache_size)
        self.num_threads = num_threads
        self.storyboard = storyboard
        self.storyboard_grid: tuple[int, int] | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0
        # one scorer serves several threads (Beam shares a model among a process' threads):
        # one lock for the text cache and its counters, one for the image tower's state
        self._cache_lock = threading.Lock()
        self._tower_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_cache_lock"], state["_tower_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache_lock = threading.Lock()
        self._tower_lock = threading.Lock()

    # --- loading ----------------------------------------------------------------------------

    def setup(self) -> None:
        if self._model is not None:
            return
        # a missing, incomplete or damaged folder fails before torch and transformers are
        # imported (a hub id is left to the hub)
        source = check_clip_model(self.model_path)
        import torch
        from transformers import AutoTokenizer, CLIPModel

        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelFolderError("device is CUDA but no CUDA device is available", uri=source)
        self._torch = torch
        self._torch_dtype = torch_dtype = getattr(torch, self.dtype)
        try:
            model: Any = CLIPModel.from_pretrained(source, dtype=torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(source)
            preprocess = self._read_preprocessor_config(source)
            config: Any = model.config
            self._configure_preprocessing(preprocess, int(config.vision_config.image_size), source)
            max_pos = int(config.text_config.max_position_embeddings)
            tok_max = int(getattr(tokenizer, "model_max_length", max_pos) or max_pos)
            storyboard_grid = self._storyboard_grid(source)
            model = model.to(self.device).eval()
        except ModelFolderError:
            raise
        except Exception as exc:  # whatever transformers or torch raise of a damaged folder
            raise ModelFolderError(
                f"cannot load CLIP model: {type(exc).__name__}: {exc}", uri=source
            ) from exc
        self._model = model
        try:
            if self.fp8 in ("mlp", "all"):
                self._to_fp8(self.fp8, source)
            if self._auto_batch:
                self.batch_size = self._batch_from_free_memory()
        except BaseException:
            self._model = None  # a later setup() starts over, not from a half-converted model
            raise
        self._tokenizer = tokenizer
        self.storyboard_grid = storyboard_grid
        self.max_text_tokens = min(max_pos, tok_max)
        logger.info(
            "loaded CLIP %s on %s (%s): %.1f M parameters, input %sx%s, embedding %s",
            source,
            self.device,
            self.dtype,
            sum(p.numel() for p in model.parameters()) / 1e6,
            self.input_size[0],
            self.input_size[1],
            self.embedding_dim,
        )

    def _to_fp8(self, scope: str, source: str) -> None:
        """The image tower's linear layers in float8 (dynamic per-row activation scales,
        per-row weight scales) through torchao: all of them (``fp8="all"``), or the encoder
        layers' MLPs only (``"mlp"``: two thirds of the tower's matrix work; the attention
        projections and the output projection stay in the model's dtype). A conversion that
        fails raises :class:`ModelFolderError` naming the model."""
        from curate.float8 import fp8_unavailable, linears_to_fp8

        why = fp8_unavailable(self.device)
        if why is not None:
            raise ModelFolderError(why, uri=source)
        if self.dtype != "bfloat16":
            raise ModelFolderError(
                f"float8 needs the model in bfloat16, it is in {self.dtype}", uri=source
            )
        try:
            if scope == "mlp":
                linears_to_fp8(self._model.vision_model, lambda m, fqn: ".mlp." in f".{fqn}")
                return
            linears_to_fp8(self._model.vision_model)
            linears_to_fp8(self._model.visual_projection)
        except Exception as exc:
            raise ModelFolderError(
                f"cannot convert the image tower's linear layers to float8 (fp8 {scope!r}): "
                f"{type(exc).__name__}: {exc}",
                uri=source,
            ) from exc

    def _batch_from_free_memory(self) -> int:
        """Frames per forward pass on CUDA: what a quarter of the free memory holds of one
        encoder layer's live activations, as a power of two in :data:`AUTO_BATCH`."""
        torch = self._torch
        free, _ = torch.cuda.mem_get_info(torch.device(self.device))
        vc = self._model.config.vision_config
        tokens = (int(vc.image_size) // int(vc.patch_size)) ** 2 + 1
        width = int(vc.intermediate_size) + 4 * int(vc.hidden_size)
        per_frame = tokens * width * torch.empty((), dtype=self._torch_dtype).element_size() * 2
        fits = max(1, int(free * 0.25 // per_frame))
        lo, hi = AUTO_BATCH
        return max(lo, min(hi, 1 << (fits.bit_length() - 1)))

    def _maybe_compile(self) -> None:
        """Compile the image tower (static shapes: every batch is padded to ``batch_size``)
        when ``compile`` says so; graphs go to storyloom's on-disk Inductor cache. Threads
        sharing the scorer compile it once."""
        if self._image_fn is not None or self.compile == "off" or self.device == "cpu":
            return
        if self.compile == "auto" and self.frames_embedded < COMPILE_AFTER_FRAMES:
            return
        with self._tower_lock:
            if self._fp8_error is not None:  # the model may be half converted: no retry
                raise self._fp8_error
            if self._image_fn is not None:
                return
            from .compile_cache import use_compile_cache

            cache = use_compile_cache()
            if self._auto_fp8():
                try:
                    self._to_fp8("mlp", self.model_path)
                except ModelFolderError as exc:
                    self._fp8_error = exc
                    raise
                self.fp8_active = "mlp"
            self._image_fn = self._torch.compile(self._model.get_image_features, dynamic=False)
        logger.info(
            "compiling CLIP's image tower%s (graphs cached in %s)",
            ", its MLPs in float8" if self.fp8_active == "mlp" else "",
            cache,
        )

    def _auto_fp8(self) -> bool:
        """Whether ``fp8="auto"`` turns the MLPs to float8 when the tower is compiled."""
        return self.fp8 == "auto" and self._fp8_available()

    def _fp8_available(self) -> bool:
        """Whether ``fp8="auto"`` can use float8 here: a bfloat16 model (per-row float8
        converts bfloat16 weights only), compute capability 8.9+ and torchao."""
        from curate.float8 import fp8_unavailable

        return self.dtype == "bfloat16" and fp8_unavailable(self.device) is None

    def image_features(self, pixels: Any) -> Any:
        """The image tower on a preprocessed batch (compiled batches padded to
        ``batch_size`` rows, the padding dropped): ``(n, D)`` projected features, on the
        device, not normalised."""
        self._maybe_compile()
        image_fn = self._image_fn
        if image_fn is None:
            return projected_features(self._model.get_image_features(pixel_values=pixels))
        n = len(pixels)
        if n < self.batch_size:
            pad = pixels[-1:].expand(self.batch_size - n, *pixels.shape[1:])
            pixels = self._torch.cat([pixels, pad])
        return projected_features(image_fn(pixel_values=pixels))[:n]

    def _storyboard_grid(self, source: str) -> tuple[int, int] | None:
        """Whether (and how) scenes get a storyboard embedding: ``storyboard=True`` always
        (grid :data:`STORYBOARD_GRID`, or the one ``scoring.json`` names), ``False`` never,
        ``None`` as the model folder's ``scoring.json`` says (a model trained on storyboards
        names its grid there: ``{"storyboard": {"grid": [rows, cols]}}``, or ``true`` for the
        default grid; ``false`` or no entry: none)."""
        if self.storyboard is False:
            return None
        declared = read_scoring(source).get("storyboard")
        if declared is not None and not isinstance(declared, (bool, dict)):
            raise ModelFolderError(
                f'{SCORING_FILE} storyboard must be true, false or {{"grid": [rows, cols]}}, '
                f"got {declared!r}",
                uri=source,
            )
        if (declared is None or declared is False) and not self.storyboard:
            return None
        if not isinstance(declared, dict):
            return STORYBOARD_GRID
        grid = declared.get("grid", STORYBOARD_GRID)
        try:
            rows, cols = (int(v) for v in grid)
        except (TypeError, ValueError):
            raise ModelFolderError(
                f"{SCORING_FILE} storyboard grid must be [rows, cols], got {grid!r}", uri=source
            ) from None
        height, width = self._crop_hw
        if not (1 <= rows <= height and 1 <= cols <= width):
            raise ModelFolderError(
                f"{SCORING_FILE} storyboard grid must be [rows, cols] of at least 1x1 tiles "
                f"that fit the model's {height}x{width} input, got {grid!r}",
                uri=source,
            )
        return rows, cols

    def __enter__(self) -> ClipScorer:
        self.setup()
        return self

    def teardown(self) -> None:
        """Drop the model and everything bound to it: the compiled tower, what float8 and
        compiling learnt, the text cache."""
        with self._tower_lock:
            self._model = None
            self._tokenizer = None
            self._image_fn = None
            self._fp8_error = None
            self.frames_embedded = 0
            self.fp8_active = self.fp8 if self.fp8 in ("mlp", "all") else "off"
        with self._cache_lock:
            self._text_cache.clear()

    @staticmethod
    def _read_preprocessor_config(source: str) -> dict[str, Any]:
        local = Path(source) / "preprocessor_config.json"
        if local.is_file():
            found: Any = local
        else:
            from transformers.utils import cached_file

            found = cached_file(source, "preprocessor_config.json")
            if found is None:
                raise ModelFolderError("no preprocessor_config.json", uri=source)
        try:
            cfg = json.loads(Path(found).read_text())
        except (OSError, ValueError, RecursionError) as exc:
            raise ModelFolderError(
                f"preprocessor_config.json is not readable JSON: {exc}", uri=source
            ) from None
        if not isinstance(cfg, dict):
            raise ModelFolderError(
                f"preprocessor_config.json is not a JSON object (got {type(cfg).__name__})",
                uri=source,
            )
        return cfg

    def _configure_preprocessing(
        self, cfg: Mapping[str, Any], image_size: int, source: str
    ) -> None:
        """Read CLIP's preprocessing (resize shortest edge, centre crop, rescale, normalise);
        a setting of a shape CLIP's image processor does not take raises
        :class:`ModelFolderError` naming it."""

        def bad(key: str, want: str) -> ModelFolderError:
            return ModelFolderError(
                f"preprocessor_config.json {key} must be {want}, got {cfg.get(key)!r}", uri=source
            )

        crop = cfg.get("crop_size", image_size)
        if isinstance(crop, Mapping):
            crop_h, crop_w = _pixels(crop.get("height")), _pixels(crop.get("width"))
        else:
            crop_h = crop_w = _pixels(crop)
        if crop_h is None or crop_w is None:
            raise bad("crop_size", 'a positive int or {"height": h, "width": w}')
        crop_hw = (crop_h, crop_w)
        size = cfg.get("size", crop_hw[0])
        self._do_resize = bool(cfg.get("do_resize", True))
        self._do_crop = bool(cfg.get("do_center_crop", True))
        # {"height", "width"}: resize to exactly that size; else shortest edge (then crop)
        self._exact_hw: tuple[int, int] | None = None
        want_size = 'a positive int, {"shortest_edge": n} or {"height": h, "width": w}'
        if isinstance(size, Mapping) and "height" in size and "width" in size:
            height, width = _pixels(size["height"]), _pixels(size["width"])
            if height is None or width is None:
                raise bad("size", want_size)
            self._exact_hw = (height, width)
            shortest: int | None = min(self._exact_hw)
        elif isinstance(size, Mapping):
            shortest = _pixels(size.get("shortest_edge"))
        else:
            shortest = _pixels(size)
        if shortest is None:
            raise bad("size", want_size)
        self._shortest_edge = shortest
        if self._do_crop:
            self._crop_hw = crop_hw
        elif self._exact_hw is not None:
            self._crop_hw = self._exact_hw
        else:
            self._crop_hw = (image_size, image_size)
        try:
            self._rescale = (
                float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
            )
        except (TypeError, ValueError):
            raise bad("rescale_factor", "a number") from None
        mean = cfg.get("image_mean", CLIP_MEAN)
        std = cfg.get("image_std", CLIP_STD)
        if not cfg.get("do_normalize", True):
            mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        for key, values in (("image_mean", mean), ("image_std", std)):
            if not _three_numbers(values) or (key == "image_std" and 0 in values):
                raise bad(
                    key, "three numbers, one per RGB channel" + " (none 0)" * (key == "image_std")
                )
        torch = self._torch
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def _require(self) -> None:
        if self._model is None:
            raise RuntimeError("ClipScorer.setup() must be called before use (or use `with`)")

    # --- properties the sampler and pipeline read ---------------------------------------------

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` the model sees; sampling frames at this size skips a resize."""
        self._require()
        return self._crop_hw

    @property
    def sample_size(self) -> int | tuple[int, int]:
        """What :class:`curate.sampling.FrameSampler` should decode at: ``(height, width)``
        for a model that squashes frames, else the shortest edge (the model crops)."""
        self._require()
        if self._exact_hw is not None and self._do_resize:
            return self._exact_hw
        return self._shortest_edge

    @property
    def embedding_dim(self) -> int:
        self._require()
        return int(self._model.config.projection_dim)

    # --- batched pure functions ----------------------------------------------------------------

    def preprocess(self, frames: np.ndarray):
        """``(N, H, W, 3)`` uint8 → ``(N, 3, h, w)`` normalised pixel tensor on the device."""
        self._require()
        torch = self._torch
        import torch.nn.functional as F
        from einops import rearrange

        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (N, H, W, 3), got shape {frames.shape}")
        x = torch.from_numpy(np.ascontiguousarray(frames))
        if self.device != "cpu":  # uint8 crosses the bus: a quarter of float32's bytes
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = rearrange(x, "n h w c -> n c h w").float()
        h, w = x.shape[-2:]
        new_hw: tuple[int, int] | None = None
        if self._do_resize and self._exact_hw is not None:
            new_hw = self._exact_hw if (h, w) != self._exact_hw else None
        elif self._do_resize and min(h, w) != self._shortest_edge:
            # as the HF processors size it: the short side exact, the long one truncated
            edge, short, long = self._shortest_edge, min(h, w), max(h, w)
            new_long = max(1, int(edge * long / short))
            new_hw = (edge, new_long) if h <= w else (new_long, edge)
        if new_hw is not None:
            x = F.interpolate(x, size=new_hw, mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp(0, 255)
        ch, cw = self._crop_hw
        h, w = x.shape[-2:]
        if (h, w) != (ch, cw):
            if h < ch or w < cw:  # as CLIPImageProcessor does: pad a too-small image, then
                # crop; an odd padding puts its extra pixel on the top / left
                ph, pw = max(0, ch - h), max(0, cw - w)
                x = F.pad(x, (pw - pw // 2, pw // 2, ph - ph // 2, ph // 2))
                h, w = x.shape[-2:]
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[:, :, top : top + ch, left : left + cw]
        x = (x * self._rescale - self._mean) / self._std
        return x.to(self._torch_dtype)

    def embed_images(self, frames: np.ndarray) -> np.ndarray:
        """Unit-norm image embeddings, ``(N, H, W, 3)`` uint8 → ``(N, D)`` float32."""
        self._require()
        frames = np.asarray(frames)
        if frames.size == 0 and frames.ndim <= 1:  # [] or np.array([]): no frames
            return np.zeros((0, self.embedding_dim), np.float32)
        _check_frames(frames, "frames")
        if len(frames) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        out = []
        with self._torch.inference_mode():
            for i in range(0, len(frames), self.batch_size):
                pixels = self.preprocess(frames[i : i + self.batch_size])
                # kept on the device: one copy back per call, no sync between batches
                out.append(self.image_features(pixels).float())
                with self._tower_lock:
                    self.frames_embedded += len(pixels)
            feats = self._torch.cat(out).cpu().numpy()
        return _l2_normalize(feats)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm text embeddings, ``list[str]`` → ``(N, D)`` float32.

        Texts are truncated at the model's context length (77 tokens for CLIP); embeddings of
        distinct texts are cached (least recently used out first).
        """
        self._require()
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.embedding_dim), np.float32)
        # the cached vectors are copied out under the lock: another thread may evict them
        # while this one runs the model
        with self._cache_lock:
            cached: dict[str, np.ndarray] = {}
            for t in dict.fromkeys(texts):
                vec = self._text_cache.get(t)
                if vec is not None:
                    cached[t] = vec
                    self._text_cache.move_to_end(t)
            todo = [t for t in dict.fromkeys(texts) if t not in cached]
            self.cache_hits += len(texts) - len(todo)
            self.cache_misses += len(todo)
        fresh: dict[str, np.ndarray] = {}
        with self._torch.inference_mode():
            for i in range(0, len(todo), self.batch_size):
                chunk = todo[i : i + self.batch_size]
                enc = self._tokenizer(
                    chunk,
                    padding=True,
                    truncation=True,
                    max_length=self.max_text_tokens,
                    return_tensors="pt",
                ).to(self.device)
                feats = self._model.get_text_features(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                )
                emb = _l2_normalize(projected_features(feats).float().cpu().numpy())
                fresh.update(zip(chunk, emb))
        if self.text_cache_size and fresh:
            with self._cache_lock:
                for t, vec in fresh.items():
                    self._text_cache[t] = vec
                    self._text_cache.move_to_end(t)
                while len(self._text_cache) > self.text_cache_size:
                    self._text_cache.popitem(last=False)
        cached.update(fresh)
        return np.stack([cached[t] for t in texts]).astype(np.float32)

    def scene_embeddings(self, scenes: Sequence[np.ndarray]) -> np.ndarray:
        """Unit-norm storyboard embeddings: per scene, its sampled frames ``(k, H, W, 3)`` in
        time order, tiled into one image of the model's input size (see :func:`storyboard`)."""
        self._require()
        grid = self.storyboard_grid or STORYBOARD_GRID
        if not len(scenes):
            return np.zeros((0, self.embedding_dim), np.float32)
        boards = []
        for i, frames in enumerate(scenes):
            frames = np.asarray(frames)
            _check_frames(frames, f"scene {i}'s frames")
            if len(frames) == 0:
                raise ValueError(f"scene {i} has no frames to tile into a storyboard")
            boards.append(storyboard(frames, self.input_size, grid))
        return self.embed_images(np.stack(boards))

    def truncate_caption(self, text: str) -> tuple[str, bool]:
        """The part of ``text`` the model reads, and whether anything was cut."""
        self._require()
        return truncate_to_tokens(text, self._tokenizer, self.max_text_tokens)

    def frame_scores(self, frame_embeddings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Cosine of every text with every frame: ``(T, N)``."""
        return self.embed_texts(texts) @ np.asarray(frame_embeddings, np.float32).T

    # --- records -------------------------------------------------------------------------------

    def score_record(
        self,
        record: Mapping[str, Any],
        frame_embeddings: np.ndarray | None = None,
        scene_embedding: np.ndarray | None = None,
    ) -> dict:
        """Fill ``caption_score``, ``frame_scores``, ``embedding`` and ``frame_embeddings``
        (and ``scene_embedding``, the storyboard's, for a model that reads storyboards).

        ``record["frames"]`` holds the sampled frames (unless ``frame_embeddings`` is given,
        as when the pipeline computed them in a batched ``RunInference`` step). A record
        without a usable caption still gets its embedding (dedup and re-captioning need it)
        and is left with ``caption_score`` null.
        """
        out = dict(record)
        frames = out.get("frames")
        if frame_embeddings is None:
            if frames is None or len(frames) == 0:
                raise ValueError(f"clip {out.get('clip_id')!r} has no sampled frames to score")
            frame_embeddings = self.embed_images(np.asarray(frames))
        has_frames = frames is not None and len(frames) > 0
        if scene_embedding is None and self.storyboard_grid is not None and has_frames:
            scene_embedding = self.scene_embeddings([np.asarray(frames)])[0]
        frame_embeddings = np.asarray(frame_embeddings, np.float32)
        out["frame_embeddings"] = frame_embeddings
        out["embedding"] = _l2_normalize(frame_embeddings.mean(axis=0)).tolist()
        if scene_embedding is not None:
            out["scene_embedding"] = np.asarray(scene_embedding, np.float32)

        caption = out.get("source_caption")
        usable = caption and not (
            out.get("status") == DROPPED and out.get("reason") in UNUSABLE_CAPTION_REASONS
        )
        if not usable:
            out["caption_score"] = None
            out["frame_scores"] = None
            return out
        cleaned = clean_caption(caption)
        if not cleaned.ok:
            out["caption_score"] = None
            out["frame_scores"] = None
            if out.get("status") != DROPPED:
                out["status"], out["reason"] = DROPPED, cleaned.reason
            out["caption_note"] = cleaned.note
            return out
        text, truncated = self.truncate_caption(cleaned.text)
        if truncated:
            out["caption_note"] = (
                f"caption of {len(cleaned.text)} characters truncated to the model's "
                f"{self.max_text_tokens} tokens ({len(text)} characters scored)"
            )
        candidates = [text]
        if self.caption_mode == "best_fragment":
            candidates += [f for f in split_caption(text) if f != text]
        sims = self.frame_scores(frame_embeddings, candidates)  # (T, N)
        agg = np.array([aggregate_scores(row, self.aggregate) for row in sims])
        best = int(np.argmax(agg))
        out["caption_score"] = float(agg[best])
        out["frame_scores"] = sims[best].astype(np.float32).tolist()
        out["fragment"] = candidates[best]
        return out

    def process(self, record: Mapping[str, Any]) -> Iterator[dict]:
        self._require()
        yield self.score_record(record)

    def process_all(self, records: Iterable[Mapping[str, Any]]) -> Iterator[dict]:
        """Score many records, embedding their frames in shared batches.

        A record that cannot be scored (one without frames) does not stop the others: every
        other record is yielded, in order, and then the error :meth:`process` raises for that
        record is raised (the first one, when several failed; the others are noted on it).
        """
        self._require()
        failed: list[Exception] = []
        batch: list[Mapping[str, Any]] = []
        n_frames = 0
        for record in records:
            batch.append(record)
            n_frames += _num_frames(record)
            if n_frames >= self.batch_size:
                yield from self._score_batch(batch, failed)
                batch, n_frames = [], 0
        if batch:
            yield from self._score_batch(batch, failed)
        if failed:
            first = failed[0]
            if len(failed) > 1:
                first.add_note(
                    f"{len(failed) - 1} more record(s) of the same call failed too: "
                    + "; ".join(str(e) for e in failed[1:6])
                )
            raise first

    def _score_batch(
        self, records: list[Mapping[str, Any]], failed: list[Exception]
    ) -> Iterator[dict]:
        sizes = [_num_frames(r) for r in records]
        stacked = [np.asarray(r["frames"]) for r, n in zip(records, sizes) if n]
        # frames of one batch may differ in size (videos of different resolutions)
        if stacked and len({f.shape[1:] for f in stacked}) == 1:
            embs = self.embed_images(np.concatenate(stacked))
            splits = np.split(embs, np.cumsum([n for n in sizes if n])[:-1])
        else:
            splits = [self.embed_images(f) for f in stacked]
        it = iter(splits)
        boards = iter(
            self.scene_embeddings(stacked) if self.storyboard_grid is not None and stacked else ()
        )
        for record, n in zip(records, sizes):
            try:
                scored = self.score_record(
                    record, next(it) if n else None, next(boards, None) if n else None
                )
            except (CurateError, ValueError) as exc:
                logger.warning("%s: %s; the other records go on", self.stage, exc)
                failed.append(exc)
                continue
            yield scored


def _check_frames(frames: np.ndarray, what: str) -> None:
    """Raise a ``ValueError`` quoting the shape and dtype unless ``frames`` are
    ``(N, H, W, 3)`` uint8."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        hint = " (one frame is frames[None])" if frames.ndim == 3 else ""
        raise ValueError(f"{what} must be (N, H, W, 3), got shape {frames.shape}{hint}")
    if frames.dtype != np.uint8:
        raise ValueError(
            f"{what} must be uint8 (0-255), got {frames.dtype}; convert them, e.g. "
            f"(frames * 255).round().astype(np.uint8) for floats in [0, 1]"
        )


def _pixels(value: Any) -> int | None:
    """``value`` as a positive pixel count, or ``None`` when it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if value >= 1 and value == int(value) else None


def _three_numbers(values: Any) -> bool:
    return (
        isinstance(values, (list, tuple))
        and len(values) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    )


def _num_frames(record: Mapping[str, Any]) -> int:
    frames = record.get("frames")
    return 0 if frames is None else len(frames)


def projected_features(out: Any) -> Any:
    """The projected embedding of ``get_*_features`` (a tensor, or ``.pooler_output`` in v5)."""
    if hasattr(out, "pooler_output") and not hasattr(out, "shape"):
        return out.pooler_output
    return out
