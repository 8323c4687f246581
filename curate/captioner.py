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
from .errors import ModelFolderError
from .models import check_captioner_folder
from .step import check_positive
from .storyboard import storyboard


class Captioner:
    """A BLIP-class image-to-text model (``BlipForConditionalGeneration``) from a folder.

    A folder with a ``captioning.json`` of ``{"storyboard": {"grid": [rows, cols]}}`` (as the
    shipped shapes-world captioner has) is captioned from scene storyboards: the sampled frames
    tiled in time order, so that the caption can name what moves where. Any other folder gets
    each scene's middle frame.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str = "cpu",
        max_new_tokens: int = 30,
        num_beams: int = 1,
        prompt: str | None = None,
        batch_size: int = 64,
    ) -> None:
        check_positive("max_new_tokens", max_new_tokens)
        check_positive("num_beams", num_beams)
        check_positive("batch_size", batch_size)
        self.model_path = os.fspath(model)
        self.device = device
        self.max_new_tokens = int(max_new_tokens)
        self.num_beams = int(num_beams)
        self.prompt = prompt
        self.batch_size = int(batch_size)
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
        try:
            self._processor = BlipProcessor.from_pretrained(self.model_path)
            self._model = BlipForConditionalGeneration.from_pretrained(self.model_path)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelFolderError(f"cannot load captioner: {exc}", uri=self.model_path) from exc
        self._model = self._model.to(self.device).eval()

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the processor feeds the model."""
        self.setup()
        size = self._processor.image_processor.size
        return int(size["height"]), int(size["width"])

    def caption(self, frames: np.ndarray) -> list[str]:
        """One caption per ``(H, W, 3)`` uint8 image."""
        import torch

        self.setup()
        images = list(np.asarray(frames))
        texts: list[str] = []
        for a in range(0, len(images), self.batch_size):
            kwargs: dict[str, Any] = {
                "images": images[a : a + self.batch_size],
                "return_tensors": "pt",
            }
            if self.prompt:
                kwargs["text"] = [self.prompt] * len(kwargs["images"])
            inputs = self._processor(**kwargs).to(self.device)
            with torch.inference_mode():
                ids = self._model.generate(
                    **inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams
                )
            texts += self._processor.batch_decode(ids, skip_special_tokens=True)
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
        """One caption per scene, each given as its sampled frames in time order."""
        if not scenes:
            return []
        return self.caption(np.stack([self.scene_image(f) for f in scenes]))
