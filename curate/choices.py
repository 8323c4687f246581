"""The named choices curate's steps accept, defined once.

Scene detectors, sampling strategies, score aggregates, model dtypes, keyframe formats: each
step validates its setting against these, and the command lines offer them as choices. This
module imports nothing, so that ``curate --help`` can list them without loading numpy.
"""

from __future__ import annotations

#: scene detectors: the numba fast path, then PySceneDetect's
DETECTORS: tuple[str, ...] = ("fast", "content", "adaptive", "histogram")
#: how the frame sampler picks a scene's frames
STRATEGIES: tuple[str, ...] = ("uniform", "middle", "keyframes")
#: how a caption's per-frame cosines become its scene score
AGGREGATES: tuple[str, ...] = ("mean", "min", "max", "median")
#: what a scene's caption is scored as: its best-fitting fragment, or the whole caption
CAPTION_MODES: tuple[str, ...] = ("best_fragment", "whole")
#: dtypes a CLIP runs in (the half-precision ones on CUDA only)
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
#: what a CUDA CLIP runs in float8: "auto" (the encoder layers' MLPs once the image tower is
#: compiled, where the GPU and torchao allow), nothing, every linear layer of the image tower,
#: or the MLPs from the first batch
FP8_SCOPES: tuple[str, ...] = ("auto", "off", "all", "mlp")
#: how sampled frames are stored in a clips shard ("none": not at all)
KEYFRAME_FORMATS: tuple[str, ...] = ("none", "jpeg", "webp")
#: where re-captioning looks for a prompt when a scene's own caption does not fit
FALLBACKS: tuple[str, ...] = ("prompt_bank", "captioner", "best")
