"""An image-to-text captioner (a BLIP-class model) that captions scenes.

Re-captioning gives a scene without a usable caption the bank's prompt or the captioner's
caption, whichever CLIP prefers. In the pipeline the captioner runs in the per-video phase,
while the sampled frames exist; its captions travel with the committed work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .captions import normalize_caption
from .choices import DTYPES
from .errors import ModelFolderError
from .models import check_captioner_folder
from .step import check_choice, check_positive
from .storyboard import storyboard

#: ``compile`` choices: compiling the image tower measured no faster on an H200 (BLIP-base,
#: bf16, batch 256: 751 and 815 scenes/s compiled against 824 and 735 eager in two runs of
#: ``benchmarks/quality.py``), so it is off unless asked for
COMPILE_CHOICES: tuple[str, ...] = ("on", "off")
#: scenes per batch on CUDA when ``batch_size`` is not given
CUDA_BATCH = 256


class Captioner:
    """A BLIP-class image-to-text model (``BlipForConditionalGeneration``) from a folder.

    A folder with a ``captioning.json`` of ``{"storyboard": {"grid": [rows, cols]}}`` (as the
    shipped shapes-world captioner has) is captioned from scene storyboards: the sampled frames
    tiled in time order, so that the caption can name what moves where. Any other folder gets
    each scene's middle frame.

    Images are resized and normalised with torch on the model's device (as the folder's
    image processor says: size, bicubic, rescale, mean and std), not with PIL on the host.
    ``dtype`` "auto" is bfloat16 on CUDA and float32 on the CPU; ``batch_size`` ``None`` is
    64 on the CPU and :data:`CUDA_BATCH` on CUDA; ``compile="on"`` compiles the image tower
    on CUDA (static shapes, batches padded; see :data:`COMPILE_CHOICES` for why it is off by
    default).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str = "cpu",
        max_new_tokens: int = 30,
        num_beams: int = 1,
        prompt: str | None = None,
        batch_size: int | None = None,
        dtype: str = "auto",
        compile: str = "off",
    ) -> None:
        check_positive("max_new_tokens", max_new_tokens)
        check_positive("num_beams", num_beams)
        if batch_size is not None:
            check_positive("batch_size", batch_size)
        check_choice("dtype", dtype, (*DTYPES, "auto"))
        check_choice("compile", compile, COMPILE_CHOICES)
        if dtype == "auto":
            dtype = "float32" if device == "cpu" else "bfloat16"
        if dtype != "float32" and device == "cpu":
            raise ValueError(f"dtype {dtype!r} needs a CUDA device; use float32 on the CPU")
        self.model_path = os.fspath(model)
        self.device = device
        self.max_new_tokens = int(max_new_tokens)
        self.num_beams = int(num_beams)
        self.prompt = prompt
        if batch_size is None:
            batch_size = 64 if device == "cpu" else CUDA_BATCH
        self.batch_size = int(batch_size)
        self.dtype = dtype
        self.compile = compile
        self._compiled = False
        self.storyboard_grid: tuple[int, int] | None = None
        self._model: Any = None

    def check_folder(self) -> None:
        """Raise :class:`ModelFolderError` naming what a local folder lacks (before any work)."""
        self.storyboard_grid = check_captioner_folder(self.model_path)

    def setup(self) -> None:
        if self._model is not None:
            return
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.check_folder()
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelFolderError(
                "captioner device is CUDA but no CUDA device is available", uri=self.model_path
            )
        try:
            processor = BlipProcessor.from_pretrained(self.model_path)
            ip = processor.image_processor
            self._input_hw = _image_size(ip, self.model_path)
            mean, std = _channel_stats(ip, self.model_path)
            model: Any = BlipForConditionalGeneration.from_pretrained(
                self.model_path, dtype=getattr(torch, self.dtype)
            )
            model = model.to(self.device).eval()
            self._mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
            self._std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        except ModelFolderError:
            raise
        except Exception as exc:  # whatever transformers or torch raise of a damaged folder
            raise ModelFolderError(
                f"cannot load captioner: {type(exc).__name__}: {exc}", uri=self.model_path
            ) from exc
        self._processor = processor
        self._model = model

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the processor feeds the model."""
        self.setup()
        return self._input_hw

    def pixel_values(self, frames: np.ndarray) -> Any:
        """``(N, H, W, 3)`` uint8 → the model's normalised ``(N, 3, h, w)`` input, on the
        device: what the folder's image processor computes (bicubic resize to its size,
        rescale, normalise), done with torch where the model runs."""
        import torch
        import torch.nn.functional as F

        self.setup()
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (N, H, W, 3) uint8, got {frames.shape}")
        x = torch.from_numpy(np.ascontiguousarray(frames))
        if self.device != "cpu":
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float()
        ip = self._processor.image_processor
        size = self._input_hw
        if ip.do_resize and tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp(0, 255).round()  # the processor resizes 8-bit images
        if ip.do_rescale:
            x = x * float(ip.rescale_factor)
        if ip.do_normalize:
            x = (x - self._mean) / self._std
        return x.to(self._model.dtype)

    def _maybe_compile(self) -> None:
        if self._compiled or self.compile == "off" or self.device == "cpu":
            return
        from .compile_cache import use_compile_cache

        use_compile_cache()
        self._model.vision_model.compile(dynamic=False)
        self._compiled = True

    def caption(self, frames: np.ndarray) -> list[str]:
        """One caption per ``(H, W, 3)`` uint8 image."""
        import torch

        self.setup()
        frames = np.asarray(frames)
        texts: list[str] = []
        for a in range(0, len(frames), self.batch_size):
            self._maybe_compile()
            pixels = self.pixel_values(frames[a : a + self.batch_size])
            n = len(pixels)
            if self._compiled and n < self.batch_size:  # one static shape
                pad = pixels[-1:].expand(self.batch_size - n, *pixels.shape[1:])
                pixels = torch.cat([pixels, pad])
            kwargs: dict[str, Any] = {"pixel_values": pixels}
            if self.prompt:
                enc = self._processor.tokenizer(
                    [self.prompt] * len(pixels), return_tensors="pt"
                ).to(self.device)
                kwargs.update(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            with torch.inference_mode():
                ids = self._model.generate(
                    **kwargs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams
                )
            texts += self._processor.batch_decode(ids[:n], skip_special_tokens=True)
        return [normalize_caption(t) for t in texts]

    def scene_image(self, frames: np.ndarray) -> np.ndarray:
        """What the model sees of a scene's sampled ``(N, H, W, 3)`` frames (time order): their
        storyboard for a storyboard captioner, else the middle frame."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or len(frames) == 0:
            raise ValueError(f"a scene needs (N, H, W, 3) frames, got shape {frames.shape}")
        self.setup()
        if self.storyboard_grid is None:
            return frames[len(frames) // 2]
        return storyboard(frames, self.input_size, self.storyboard_grid)

    def caption_scenes(self, scenes: Sequence[np.ndarray]) -> list[str]:
        """One caption per scene, each given as its sampled frames in time order. Scenes
        whose images differ in size (middle frames of videos of different resolutions) are
        captioned in one batch per size, each as it would be alone."""
        if not len(scenes):
            return []
        images = [self.scene_image(f) for f in scenes]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(i)
        texts: list[str] = [""] * len(images)
        for positions in by_shape.values():
            captions = self.caption(np.stack([images[i] for i in positions]))
            for i, text in zip(positions, captions):
                texts[i] = text
        return texts


def _image_size(ip: Any, folder: str) -> tuple[int, int]:
    """``(height, width)`` the folder's image processor resizes to; a size of another shape
    raises :class:`ModelFolderError` naming it."""
    size: Any = getattr(ip, "size", None)
    try:
        height, width = int(size["height"]), int(size["width"])
    except (TypeError, KeyError, ValueError):
        height = width = 0
    if height < 1 or width < 1:
        try:
            shown: Any = dict(size)  # a SizeDict: its fields that are set
        except (TypeError, ValueError):
            shown = size
        raise ModelFolderError(
            f'the image processor\'s size must be {{"height": h, "width": w}}, got {shown!r}',
            uri=folder,
        )
    return height, width


def _channel_stats(ip: Any, folder: str) -> tuple[list[float], list[float]]:
    """The image processor's per-channel mean and std; other shapes raise
    :class:`ModelFolderError` naming them."""
    stats = []
    for key in ("image_mean", "image_std"):
        values: Any = getattr(ip, key, None)
        try:
            floats = [float(v) for v in values]
        except (TypeError, ValueError):
            floats = []
        if len(floats) != 3 or (key == "image_std" and 0.0 in floats):
            raise ModelFolderError(
                f"the image processor's {key} must be three numbers, one per RGB channel, "
                f"got {values!r}",
                uri=folder,
            )
        stats.append(floats)
    return stats[0], stats[1]
