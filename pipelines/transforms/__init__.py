"""The composite transforms of the curate pipeline, by phase.

- :mod:`~pipelines.transforms.per_video`: read the manifest, decode and split (isolated),
  clean captions, score with CLIP (``RunInference``), commit each video's work
- :mod:`~pipelines.transforms.corpus`: the corpus phase on a cluster's workers
  (:class:`CorpusOnWorkers`, keyed steps of :class:`curate.corpus.CorpusPhase`), and as
  record-level transforms: read the committed work, the corpus cut-off, filter and
  re-caption, mark duplicates, write the shards, publish the manifest
- :mod:`~pipelines.transforms.common`: dead-letter routing, :class:`Gather`, stage timing
"""

from .common import FAILURES, NAMESPACE, Gather
from .corpus import (
    CaptionCutoff,
    CorpusOnWorkers,
    FilterAndRecaption,
    FindDuplicates,
    MarkDuplicates,
    Publish,
    ReadWork,
    WriteShards,
)
from .per_video import (
    CleanCaptions,
    CommitWork,
    FailureRateExceeded,
    ProbeAndSplit,
    ReadManifest,
    ScoreCaptions,
    failure_rate_problem,
    reset_failure_rate,
)

__all__ = [
    "FAILURES",
    "NAMESPACE",
    "CaptionCutoff",
    "CleanCaptions",
    "CommitWork",
    "CorpusOnWorkers",
    "FailureRateExceeded",
    "FilterAndRecaption",
    "FindDuplicates",
    "Gather",
    "MarkDuplicates",
    "ProbeAndSplit",
    "Publish",
    "ReadManifest",
    "ReadWork",
    "ScoreCaptions",
    "WriteShards",
    "failure_rate_problem",
    "reset_failure_rate",
]
