"""The hierarchical plan of diffusion over diffusion: which model call makes which frames.

With ``L`` frames per model call and depth ``m`` (the number of levels, which is also the number
of sequential rounds), the regular structure makes ``N = (L − 1)^m + 1`` frames:

* level 0 (global): one call makes ``L`` keyframes spread over the whole story, none given;
* level j ≥ 1 (local): for every adjacent pair ``(a, b)`` of frames known after level j − 1 with
  ``b − a > 1``, one call makes up to ``L − 2`` frames between them, given ``a`` and ``b``.

For ``L = 16``: depth 1 → 16 frames (1 call), depth 2 → 226 frames (16 calls, 2 rounds),
depth 3 → 3376 frames (241 calls, 3 rounds). All calls of one level are independent, so a level
is one batch however many calls it holds.

Other lengths use a policy:

* ``"stretch"`` (default): positions are rounded linspaces at every level, so spacing is uneven
  by at most one frame; every call still holds ≤ ``L`` frames. Level 0 always makes ``L``
  keyframes over the whole story; below it each gap is split into the fewest parts that let
  the remaining levels finish, which keeps the last level's calls full and the call count low
  (1024 frames at L = 16: 1 + 15 + 75 = 91 calls in 3 rounds). Exactly ``N`` frames are
  generated. When ``depth`` is larger than ``N`` needs, each level splits its gaps
  geometrically (``≈ g^(1/r)`` parts for ``r`` levels left) so that every level does part of
  the work.
* ``"trim"``: the regular structure for ``(L − 1)^m + 1`` frames, keeping the first ``N``;
  calls whose frames are all dropped (and not needed as ends by a kept call) are skipped.
  ``Plan.generated_frames`` counts what the kept calls make; ``Plan.dropped`` lists the frames
  beyond ``N`` that they make anyway.

:func:`autoregressive_plan` lays out the sliding-window baseline as a plan of the same type
(one call per level), so a benchmark runs both through the same executor and compares model
calls and rounds on equal footing.

Every builder keeps its inputs in bounds and refuses, with a ``ValueError`` naming the value,
what it cannot honour exactly (nothing is clamped):

=========================  ==================  ================================================
input                      accepted            why
=========================  ==================  ================================================
output frames              1 to 1,000,000      ``MAX_FRAMES``; raise it with :func:`frame_limit`
                                               (``--max-frames``): a plan holds every frame
frame rate (fps)           0.1 to 240          ``FPS_RANGE``: a million fps is a typo
frames per call ``L``      3 to 256            ``FRAMES_PER_CALL_RANGE`` (2 for sliding windows)
depth                      1 to 32, and no     ``MAX_DEPTH``; a plan never has fewer levels
                           more levels than    than asked for
                           the length can use
=========================  ==================  ================================================

The package: ``limits`` (the bounds above and their checks), ``structure`` (:class:`Call`,
:class:`Level`, :class:`Plan`; :meth:`Plan.check` states the rules the builders keep) and
``build`` (the arithmetic and the builders). Pure Python, no torch.
"""

from __future__ import annotations

from .build import (
    autoregressive_plan,
    build_plan,
    check_policy_options,
    deepest,
    depth_for,
    max_frames,
    plan_story,
    segment_progress,
    side_by_side,
    with_prompts,
)
from .limits import (
    FPS_RANGE,
    FRAMES_PER_CALL_RANGE,
    MAX_DEPTH,
    MAX_FRAMES,
    check_fps,
    current_frame_limit,
    frame_limit,
)
from .structure import AUTOREGRESSIVE, POLICIES, Call, Level, Plan

__all__ = [
    "AUTOREGRESSIVE",
    "FPS_RANGE",
    "FRAMES_PER_CALL_RANGE",
    "MAX_DEPTH",
    "MAX_FRAMES",
    "POLICIES",
    "Call",
    "Level",
    "Plan",
    "autoregressive_plan",
    "build_plan",
    "check_fps",
    "current_frame_limit",
    "deepest",
    "depth_for",
    "frame_limit",
    "max_frames",
    "check_policy_options",
    "plan_story",
    "segment_progress",
    "side_by_side",
    "with_prompts",
]
