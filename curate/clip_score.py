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
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from schemas.tables import DROPPED, UNUSABLE_CAPTION_REASONS

from .captions import clean_caption, split_caption, truncate_to_tokens
from .choices import AGGREGATES, CAPTION_MODES, DTYPES, FP8_SCOPES
from .errors import ModelFolderError
from .models import CLIP_MEAN, CLIP_STD, DEFAULT_MODEL, SCORING_FILE, read_scoring, resolve_model
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
    compute capability 8.9+, needs ``torchao``; "auto": the encoder layers' MLPs in float8
    with per-row scales from the moment the tower is compiled, where the GPU and torchao
    allow, else nothing; "mlp": the same from the first batch; "all": every linear layer;
    "off". On one H200, ViT-L/14 shape: "mlp" 3,374 frames/s, 1.42x eager bf16, embeddings at
    cosine >= 0.9993 of bf16; "all" 3,595 frames/s but cosine 0.9984, so it is opt-in), ``aggregate`` (over frames),
    ``caption_mode`` ("best_fragment" or "whole"), ``text_cache_size`` (distinct texts whose
    embeddings are kept), ``num_threads`` (torch CPU threads; ``None`` leaves torch's default),
    ``storyboard`` (also embed each scene's sampled frames tiled in time order, which is what
    lets re-captioning read motion: ``None`` does so when the model folder's ``scoring.json``
    declares a storyboard grid, as the shipped model's does; ``True`` / ``False`` force it).
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

    # --- loading ----------------------------------------------------------------------------

    def setup(self) -> None:
        if self._model is not None:
            return
        # a missing or incomplete folder fails before torch and transformers are imported
        source = resolve_model(self.model_path)
        import torch
        from transformers import AutoTokenizer, CLIPModel

        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelFolderError("device is CUDA but no CUDA device is available", uri=source)
        torch_dtype = getattr(torch, self.dtype)
        try:
            model: Any = CLIPModel.from_pretrained(source, dtype=torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(source)
            preprocess = self._read_preprocessor_config(source)
        except ModelFolderError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise ModelFolderError(f"cannot load CLIP model: {exc}", uri=source) from exc
        self._model = model.to(self.device).eval()
        self._tokenizer = tokenizer
        self._torch = torch
        self._torch_dtype = torch_dtype
        if self.fp8 in ("mlp", "all"):
            self._to_fp8(self.fp8, source)
        if self._auto_batch:
            self.batch_size = self._batch_from_free_memory()
        self._configure_preprocessing(preprocess)
        self.storyboard_grid = self._storyboard_grid(source)
        config: Any = model.config
        max_pos = int(config.text_config.max_position_embeddings)
        tok_max = int(getattr(tokenizer, "model_max_length", max_pos) or max_pos)
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
        projections and the output projection stay in the model's dtype)."""
        from curate.float8 import fp8_unavailable, linears_to_fp8

        why = fp8_unavailable(self.device)
        if why is not None:
            raise ModelFolderError(why, uri=source)
        if scope == "mlp":
            linears_to_fp8(self._model.vision_model, lambda m, fqn: ".mlp." in f".{fqn}")
            return
        linears_to_fp8(self._model.vision_model)
        linears_to_fp8(self._model.visual_projection)

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
        when ``compile`` says so; graphs go to storyloom's on-disk Inductor cache."""
        if self._image_fn is not None or self.compile == "off" or self.device == "cpu":
            return
        if self.compile == "auto" and self.frames_embedded < COMPILE_AFTER_FRAMES:
            return
        from .compile_cache import use_compile_cache

        cache = use_compile_cache()
        if self.fp8 == "auto" and self._fp8_available():
            self._to_fp8("mlp", self.model_path)
            self.fp8_active = "mlp"
        self._image_fn = self._torch.compile(self._model.get_image_features, dynamic=False)
        logger.info(
            "compiling CLIP's image tower%s (graphs cached in %s)",
            ", its MLPs in float8" if self.fp8_active == "mlp" else "",
            cache,
        )

    def _fp8_available(self) -> bool:
        """Whether ``fp8="auto"`` can use float8 here: compute capability 8.9+ and torchao."""
        from curate.float8 import fp8_unavailable

        return fp8_unavailable(self.device) is None

    def image_features(self, pixels: Any) -> Any:
        """The image tower on a preprocessed batch (compiled batches padded to
        ``batch_size`` rows, the padding dropped): ``(n, D)`` projected features, on the
        device, not normalised."""
        self._maybe_compile()
        if self._image_fn is None:
            return projected_features(self._model.get_image_features(pixel_values=pixels))
        n = len(pixels)
        if n < self.batch_size:
            pad = pixels[-1:].expand(self.batch_size - n, *pixels.shape[1:])
            pixels = self._torch.cat([pixels, pad])
        return projected_features(self._image_fn(pixel_values=pixels))[:n]

    def _storyboard_grid(self, source: str) -> tuple[int, int] | None:
        """Whether (and how) scenes get a storyboard embedding: ``storyboard=True`` always
        (grid :data:`STORYBOARD_GRID`), ``False`` never, ``None`` as the model folder's
        ``scoring.json`` says (a model trained on storyboards names its grid there)."""
        if self.storyboard is False:
            return None
        declared = read_scoring(source).get("storyboard")
        if declared is None and not self.storyboard:
            return None
        grid = (
            (declared or {}).get("grid", STORYBOARD_GRID)
            if isinstance(declared, dict)
            else STORYBOARD_GRID
        )
        try:
            rows, cols = (int(v) for v in grid)
        except (TypeError, ValueError):
            raise ModelFolderError(
                f"{SCORING_FILE} storyboard grid must be [rows, cols], got {grid!r}", uri=source
            ) from None
        return rows, cols

    def __enter__(self) -> ClipScorer:
        self.setup()
        return self

    def teardown(self) -> None:
        self._model = None
        self._tokenizer = None
        self._text_cache.clear()

    @staticmethod
    def _read_preprocessor_config(source: str) -> dict[str, Any]:
        local = Path(source) / "preprocessor_config.json"
        if local.is_file():
            return json.loads(local.read_text())
        from transformers.utils import cached_file

        found = cached_file(source, "preprocessor_config.json")
        if found is None:
            raise ModelFolderError("no preprocessor_config.json", uri=source)
        return json.loads(Path(found).read_text())

    def _configure_preprocessing(self, cfg: Mapping[str, Any]) -> None:
        """Read CLIP's preprocessing (resize shortest edge, centre crop, rescale, normalise)."""
        image_size = int(self._model.config.vision_config.image_size)
        crop = cfg.get("crop_size", image_size)
        if isinstance(crop, Mapping):
            crop_hw = (int(crop["height"]), int(crop["width"]))
        else:
            crop_hw = (int(crop), int(crop))
        size = cfg.get("size", crop_hw[0])
        self._do_resize = bool(cfg.get("do_resize", True))
        self._do_crop = bool(cfg.get("do_center_crop", True))
        # {"height", "width"}: resize to exactly that size; else shortest edge (then crop)
        self._exact_hw: tuple[int, int] | None = None
        if isinstance(size, Mapping) and "height" in size and "width" in size:
            self._exact_hw = (int(size["height"]), int(size["width"]))
            shortest = min(self._exact_hw)
        elif isinstance(size, Mapping):
            shortest = int(size["shortest_edge"])
        else:
            shortest = int(size)
        self._shortest_edge = shortest
        if self._do_crop:
            self._crop_hw = crop_hw
        elif self._exact_hw is not None:
            self._crop_hw = self._exact_hw
        else:
            self._crop_hw = (image_size, image_size)
        self._rescale = (
            float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
        )
        mean = cfg.get("image_mean", CLIP_MEAN)
        std = cfg.get("image_std", CLIP_STD)
        if not cfg.get("do_normalize", True):
            mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
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
            scale = self._shortest_edge / min(h, w)
            new_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
        if new_hw is not None:
            x = F.interpolate(x, size=new_hw, mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp(0, 255)
        ch, cw = self._crop_hw
        h, w = x.shape[-2:]
        if (h, w) != (ch, cw):
            if h < ch or w < cw:  # as the HF processors do: pad a too-small image, then crop
                ph, pw = max(0, ch - h), max(0, cw - w)
                x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
                h, w = x.shape[-2:]
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[:, :, top : top + ch, left : left + cw]
        x = (x * self._rescale - self._mean) / self._std
        return x.to(self._torch_dtype)

    def embed_images(self, frames: np.ndarray) -> np.ndarray:
        """Unit-norm image embeddings, ``(N, H, W, 3)`` uint8 → ``(N, D)`` float32."""
        self._require()
        frames = np.asarray(frames)
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {frames.dtype}")
        if len(frames) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        out = []
        with self._torch.inference_mode():
            for i in range(0, len(frames), self.batch_size):
                pixels = self.preprocess(frames[i : i + self.batch_size])
                # kept on the device: one copy back per call, no sync between batches
                out.append(self.image_features(pixels).float())
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
        todo = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
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
        rows = []
        for t in texts:
            vec = fresh.get(t)
            if vec is None:
                vec = self._text_cache[t]
                self._text_cache.move_to_end(t)
            rows.append(vec)
        if self.text_cache_size:
            for t, vec in fresh.items():
                self._text_cache[t] = vec
                self._text_cache.move_to_end(t)
            while len(self._text_cache) > self.text_cache_size:
                self._text_cache.popitem(last=False)
        return np.stack(rows).astype(np.float32)

    def scene_embeddings(self, scenes: Sequence[np.ndarray]) -> np.ndarray:
        """Unit-norm storyboard embeddings: per scene, its sampled frames ``(k, H, W, 3)`` in
        time order, tiled into one image of the model's input size (see :func:`storyboard`)."""
        self._require()
        grid = self.storyboard_grid or STORYBOARD_GRID
        if not len(scenes):
            return np.zeros((0, self.embedding_dim), np.float32)
        boards = np.stack([storyboard(np.asarray(f), self.input_size, grid) for f in scenes])
        return self.embed_images(boards)

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
        """Score many records, embedding their frames in shared batches."""
        self._require()
        batch: list[Mapping[str, Any]] = []
        n_frames = 0
        for record in records:
            batch.append(record)
            n_frames += _num_frames(record)
            if n_frames >= self.batch_size:
                yield from self._score_batch(batch)
                batch, n_frames = [], 0
        if batch:
            yield from self._score_batch(batch)

    def _score_batch(self, records: list[Mapping[str, Any]]) -> Iterator[dict]:
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
            yield self.score_record(
                record, next(it) if n else None, next(boards, None) if n else None
            )


def _num_frames(record: Mapping[str, Any]) -> int:
    frames = record.get("frames")
    return 0 if frames is None else len(frames)


def projected_features(out: Any) -> Any:
    """The projected embedding of ``get_*_features`` (a tensor, or ``.pooler_output`` in v5)."""
    if hasattr(out, "pooler_output") and not hasattr(out, "shape"):
        return out.pooler_output
    return out
