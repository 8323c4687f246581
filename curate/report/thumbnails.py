"""Thumbnails as ``data:`` URIs: a clip's stored keyframe where the run kept them, else its
middle frame decoded from the source video at thumbnail size, one video at a time."""

from __future__ import annotations

import base64
import io
import logging
from collections import defaultdict
from typing import Any

import numpy as np

from ..video import read_frames
from .markup import esc

logger = logging.getLogger(__name__)


def _jpeg_uri(image: Any) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _fit(image: Any, height: int) -> Any:
    w, h = image.size
    return image.resize((max(1, round(w * height / h)), height))


class Thumbnails:
    """Middle frames of clips and segments as ``data:`` URIs, decoded one video at a time."""

    def __init__(self, height: int) -> None:
        self.height = height
        self._wanted: dict[str, set[int]] = defaultdict(set)
        self._keyframes: dict[tuple[str, int], bytes] = {}
        self._done: dict[tuple[str, int], str | None] = {}

    def want(self, uri: str | None, frame: int, keyframe: bytes | None = None) -> None:
        if not uri:
            return
        if keyframe is not None:
            self._keyframes[(uri, frame)] = keyframe
        else:
            self._wanted[uri].add(int(frame))

    def render(self) -> None:
        from PIL import Image

        for (uri, frame), data in self._keyframes.items():
            try:
                self._done[(uri, frame)] = _jpeg_uri(
                    _fit(Image.open(io.BytesIO(data)), self.height)
                )
            except Exception as exc:  # an unreadable stored keyframe: no thumbnail
                logger.debug("%s frame %d: keyframe unreadable: %s", uri, frame, exc)
                self._done[(uri, frame)] = None
        if not self._wanted:
            return
        for uri, frames in sorted(self._wanted.items()):
            order = sorted(frames)
            try:
                pixels = read_frames(uri, order, short_side=self.height)
            except Exception as exc:  # a moved or unreadable video: the page says so
                logger.warning("report: no thumbnails from %s: %s", uri, exc)
                for f in order:
                    self._done[(uri, f)] = None
                continue
            for f, px in zip(order, pixels):
                self._done[(uri, f)] = _jpeg_uri(_fit(Image.fromarray(np.asarray(px)), self.height))

    def img(self, uri: str | None, frame: int, alt: str) -> str:
        src = self._done.get((uri or "", int(frame)))
        if src is None:
            return f'<div class="nothumb" title="{esc(alt)}">no frame</div>'
        return f'<img class="thumb" src="{src}" alt="{esc(alt)}" title="{esc(alt)}">'
