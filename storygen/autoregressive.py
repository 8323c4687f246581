"""The autoregressive baseline: sliding windows, each given the end of the one before.

Window ``k + 1`` holds ``L`` frames whose first ``overlap`` are the last ``overlap`` frames of
window ``k`` (known frames for the masked model, replacement for a plain text-to-video UNet).
It runs on the same models, executor, seeding and output type as the hierarchical pipeline, so
speed (model calls, sequential rounds, wall time, memory) and consistency compare on equal
footing: every window depends on the one before, so ``rounds == model_calls``, and nothing
can be batched or spread over devices.
"""

from __future__ import annotations

from typing import Any

from storygen.pipeline import StoryVideoOutput, StoryVideoPipeline
from storygen.plan import AUTOREGRESSIVE


def _baseline_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    for name in ("depth", "policy"):
        if kwargs.get(name) not in (None, AUTOREGRESSIVE):
            raise ValueError(
                f"{name}={kwargs[name]!r} does not apply to the autoregressive baseline"
            )
    return {k: v for k, v in kwargs.items() if k not in ("depth", "policy")}


def generate_autoregressive(
    pipe: StoryVideoPipeline,
    prompt: Any,
    num_frames: int | None = None,
    *,
    overlap: int = 1,
    **kwargs: Any,
) -> StoryVideoOutput:
    """Render ``prompt`` with ``pipe``'s models as overlapping sliding windows.

    Takes :meth:`StoryVideoPipeline.__call__`'s arguments (``depth`` and ``policy`` aside).
    """
    kwargs = _baseline_kwargs(kwargs)
    return StoryVideoPipeline.__call__(
        pipe, prompt, num_frames, policy=AUTOREGRESSIVE, overlap=overlap, **kwargs
    )


class AutoregressiveStoryPipeline(StoryVideoPipeline):
    """:class:`StoryVideoPipeline` whose calls run as sliding windows (the baseline)."""

    def __call__(  # type: ignore[override]
        self, prompt: Any, num_frames: int | None = None, *, overlap: int = 1, **kwargs: Any
    ) -> StoryVideoOutput:
        kwargs = _baseline_kwargs(kwargs)
        return super().__call__(
            prompt, num_frames, policy=AUTOREGRESSIVE, overlap=overlap, **kwargs
        )
