"""Training shards from a curate run: WebDataset-style tar files that video trainers stream.

``curate export RUN --out DIR`` reads a published run folder (its clips table) and writes::

    DIR/
      shard-000000.tar       samples: KEY.json (timed prompts, ids, span, scores) + KEY.mp4
      shard-000001.tar       ...
      _index.parquet         one row per sample: shard, key, clip_id, prompt, frames, ...
      _failures.parquet      every selected clip that is not in a sample, with the reason
      _export.json           settings, the source run, counts, shards (written last)
      _parts/                what each finished shard holds (for resume; kept afterwards)

A *sample* is a window of ``frames`` frames re-encoded at ``width`` x ``height`` and ``fps``
(h264 mp4, as video2dataset writes samples). Windows are laid over one video's *runs*: maximal
sequences of consecutive selected clips (by default kept, non-duplicate clips), so a window
may span a cut and its frames carry per-frame prompts (the JSON's ``segments``, in the shape
of a stories segment, in the sample's own frames and seconds). A run of ``L`` frames at the
export fps holds ``L // frames`` windows, centred, without overlap: no source frame is in two
samples. A run shorter than one window, and a clip that falls wholly in the frames trimmed
off a run's ends, is named in ``_failures.parquet`` with the reason, as is every clip of a
video that cannot be decoded (the rest export), of a video whose clips rows give an fps or a
span no window can be laid over (``InvalidValue``), and of a video slower than the export fps
(``UpsampledSource``: its frames would repeat, one source frame in two output frames, or in
two samples; ``allow_upsample`` exports it so, and its samples' JSON shows it, a
``source.fps`` below ``fps`` and repeated ``source_frames``). With ``raw`` every input video
is one run and every frame's prompt is the video's manifest caption (the raw arm of the
curation ablation); a video without one is a ``NoPrompt`` failures row (an empty prompt is
the trainer's unconditional one).

Frame ``k`` at the export fps of a run that starts at source frame ``a`` shows source frame
``a + round(k * source_fps / fps)`` (:func:`source_indices`): nearest-frame resampling, no
blending, so every frame is a real frame of the source. Each sample's JSON lists its
``source_frames``.

Determinism and resume: the plan (which windows, in which order, with which keys) depends on
the run's tables alone; videos are ordered by a hash of their id (so shards mix videos) and
encoding is single-threaded without macroblock-tree rate control (byte-reproducible). Shards
are filled in plan order and closed when the next sample would pass ``samples_per_shard`` or
``shard_bytes``. Each shard is written under a temporary name and renamed, then its part
record (samples, failures met since the previous shard, where the plan continues) is written
atomically. A rerun after a crash keeps the shards whose part records exist, removes anything
else, and continues from the last part: the shards come out byte-identical.

Tar files are written with the standard library's :mod:`tarfile` rather than webdataset's
``TarWriter``: it needs no extra dependency on the machines that write shards, and it lets us
fix every header field (mtime, owner, mode, format) so that reruns are byte-identical
(``TarWriter`` stamps the current time). The samples follow the WebDataset layout (members
grouped by key, key = name up to the first dot), so ``webdataset.WebDataset`` and ``tarfile``
both read them.

The package, in the order an export runs: ``settings`` (:class:`ExportSettings`, the file
names, the index schema, failure stages), ``plan`` (windows over runs of clips), ``codec``
(one video decoded and its samples encoded, in a child process), ``writer`` (shards, part
records, resume, publishing), ``run`` (:func:`export_run`), ``readers`` (a finished export).
"""

from __future__ import annotations

from schemas.tables import FAILURES_SCHEMA

# _ExportStep and _results keep the private names the decoder-crash test drives directly
from .codec import ExportStep as _ExportStep  # noqa: F401
from .codec import decode_mp4, decode_size, encode_mp4, window_groups
from .plan import plan_export, source_indices
from .readers import iter_samples, read_export, read_failures, shard_paths, shard_samples
from .run import _results, export_run  # noqa: F401 (_results: see _ExportStep)
from .settings import (
    EXPORT_NAME,
    FAILURES_NAME,
    INDEX_NAME,
    INDEX_SCHEMA,
    ExportError,
    ExportSettings,
    parse_bytes,
    parse_size,
)
from .writer import ExportSummary

__all__ = [
    "EXPORT_NAME",
    "FAILURES_NAME",
    "FAILURES_SCHEMA",
    "INDEX_NAME",
    "INDEX_SCHEMA",
    "ExportError",
    "ExportSettings",
    "ExportSummary",
    "decode_mp4",
    "decode_size",
    "encode_mp4",
    "export_run",
    "iter_samples",
    "parse_bytes",
    "parse_size",
    "plan_export",
    "read_export",
    "read_failures",
    "shard_paths",
    "shard_samples",
    "source_indices",
    "window_groups",
]
