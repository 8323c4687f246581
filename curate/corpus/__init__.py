"""The corpus phase, streamed: every committed video filtered, re-captioned, deduplicated and
written to shards, in memory bounded by a setting (``memory_mb``), not by the corpus' size.

The corpus phase needs the whole corpus for three decisions (a percentile cut-off, the prompt
bank, duplicates across videos) but never needs it in memory at once. :class:`CorpusPhase`
reads the committed work (``OUT/_work``) a chunk of work files at a time and keeps what later
steps need on disk, in its scratch folder ``OUT/_corpus``::

    plan ─► scores (per chunk) ─► cut-off ─► bank prompts (per chunk) ─► prompt bank
         ─► re-caption (per chunk): rows spilled per output shard, sorted; kept clips'
            signatures appended to a store with a compact table (dedup columns)
         ─► dedup: exact search (up to the exact limit), or inverted lists (per list group)
            ─► the video pass and union-find ─► the duplicate map, per shard
         ─► write shards (per shard: the chunks' sorted parts merged, row group by row group)
         ─► publish (_manifest.json, last)

Each step after the plan is keyed (a chunk, a list group, a shard) and reads and writes only
files of the run folder, so the same methods run one after another in one process
(:meth:`CorpusPhase.run`) or as Beam ``ParDo`` s on a cluster's workers
(:mod:`pipelines.transforms.corpus`), with the same result.

What stays in memory: one chunk of records (sized by ``memory_mb`` from the work files'
metadata), one work file at a time within it, one row group per shard writer and a batch per
merged part; besides that one float per clip (the scores of a percentile cut-off), a few dozen
bytes per kept clip (the dedup columns) and per video (the plan), and the duplicate map.

The decisions are the ones of :mod:`curate.filtering`, :mod:`curate.prompt_bank`,
:mod:`curate.recaption` and :mod:`curate.dedup`, called as everywhere else; below the exact
limit dedup is the in-memory exact search, so a small run's output is the same as before.

The package, one kind of thing per module:

- :mod:`.phase`: :class:`CorpusPhase`, the steps in order, and :class:`CorpusReport`;
- :mod:`.plan`: :class:`CorpusPlan` (chunks of work files, shards, exact or not) and
  :class:`Budget` (what ``memory_mb`` allows each step);
- :mod:`.read`: the chosen records of a work file, whole or a few nested columns;
- :mod:`.per_video`: one video under the cut-off, re-captioned (:func:`filter_and_recaption`);
- :mod:`.spill`: one chunk's rows spilled per table and shard, sorted, with its signatures;
- :mod:`.merge`: the sort order of a shard's rows and the merge of its sorted parts;
- :mod:`.duplicates`: the dedup step (exact search, or inverted lists per list group) and
  the duplicate map per shard;
- :mod:`.write`: one output shard merged into ``OUT/_staging`` with its counts;
- :mod:`.scratch`: the scratch folder's layout and atomic writes.

Names with a leading underscore are the package's own, shared between its modules.
"""

from __future__ import annotations

from .per_video import filter_and_recaption, recaption_filtered
from .phase import CorpusPhase, CorpusReport
from .plan import DEFAULT_MEMORY_MB, Budget, CorpusPlan
from .read import read_records

# public constants of the phase, importable here as before (not part of ``*``)
from .spill import SHARD_KEYS as SHARD_KEYS
from .spill import SORT_KEYS as SORT_KEYS

__all__ = [
    "DEFAULT_MEMORY_MB",
    "Budget",
    "CorpusPhase",
    "CorpusPlan",
    "CorpusReport",
    "filter_and_recaption",
    "read_records",
    "recaption_filtered",
]
