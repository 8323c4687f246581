"""What the transforms of both phases share: dead-letter routing, gathering, stage timing.

Dead letters. Each per-video stage emits failed videos on a ``failures`` output
(``TaggedOutput``) and the rest on its main output; nothing is dropped. Beam 2.77's
``DaskRunner`` hands *every* element of a multi-output ``ParDo`` to each consumer, whatever its
tag, so each output is read through :func:`only`, a filter on the element's own state: a no-op
on runners that route tags, the difference between right and doubled rows on Dask.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from curate.work import VideoWork

#: the metrics namespace of every counter and timer of the curate pipeline
NAMESPACE = "storyloom"
#: the tag of the dead-letter output of a per-video stage
FAILURES = "failures"


def only(pcoll: beam.PCollection, *, failed: bool, label: str) -> beam.PCollection:
    return pcoll | label >> beam.Filter(
        lambda w, f=failed: isinstance(w, VideoWork) and w.failed == f
    )


def split_outputs(results: Any, name: str) -> tuple[beam.PCollection, beam.PCollection]:
    """The ``(ok, failed)`` outputs of a multi-output per-video stage."""
    ok = only(results.ok, failed=False, label=f"{name}Ok")
    bad = only(results[FAILURES], failed=True, label=f"{name}Failed")
    return ok, bad


def timed(work: VideoWork, stage: str, seconds: float) -> None:
    work.timings[stage] = work.timings.get(stage, 0.0) + seconds
    Metrics.distribution(NAMESPACE, f"{stage}_ms").update(int(seconds * 1000))


class Gather(beam.PTransform):
    """All elements as one list (nothing when there are none), through a single-key
    ``GroupByKey``.

    Used instead of ``CombineGlobally`` / ``ToList``: their lifted partial combine emits from
    ``finish_bundle``, which Beam 2.77's DaskRunner drops, so a corpus-level value computed
    through them silently misses whole partitions there. A ``GroupByKey`` is translated
    directly by every runner. Corpus-level values here (scores, prompts, dedup rows) are
    gathered in one place by nature, so nothing is lost in scale.
    """

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return (
            pcoll
            | "Key" >> beam.Map(lambda x: (0, x))
            | "Group" >> beam.GroupByKey()
            | "List" >> beam.Map(lambda kv: list(kv[1]))
        )
