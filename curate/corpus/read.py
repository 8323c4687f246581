"""Reading committed work (``OUT/_work``) for the corpus phase: the records a plan chose from
one work file, whole (:func:`read_records`, for re-captioning) or only the nested columns a
step needs (:func:`_read_light`, for the scores and the bank prompts)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..work import joined_clips

#: the extras held as arrays (not lists of Python floats) while a chunk is re-captioned
_ARRAY_EXTRAS = ("frame_embeddings", "scene_embedding", "dedup_signature")

#: what the cut-off step reads of each record
_SCORE_COLUMNS = ("clips.list.element.caption_score", "clips.list.element.status")
#: what the bank-prompt step reads of each record
_PROMPT_COLUMNS = (
    "clips.list.element.clip_id",
    "clips.list.element.status",
    "clips.list.element.reason",
    "clips.list.element.caption_score",
    "clips.list.element.source_caption",
    "clip_extras.list.element.clip_id",
    "clip_extras.list.element.fragment",
)


def _list_arrays(arr: pa.Array) -> list[Any]:
    """``list<float>`` or ``list<list<float>>`` per row → a float32 array per row (2-D for a
    list of equal-length lists, else a list of 1-D arrays), ``None`` for a null."""
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    offsets = arr.offsets.to_numpy()
    inner = arr.values
    if not pa.types.is_list(inner.type):
        values = inner.to_numpy(zero_copy_only=False)
        return [values[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(arr))]
    mid = inner.offsets.to_numpy()
    values = inner.values.to_numpy(zero_copy_only=False)
    out: list[Any] = []
    for i in range(len(arr)):
        a, b = offsets[i], offsets[i + 1]
        lengths = np.diff(mid[a : b + 1])
        if not valid[i]:
            out.append(None)
        elif len(lengths) and (lengths == lengths[0]).all():
            out.append(values[mid[a] : mid[b]].reshape(len(lengths), int(lengths[0])))
        else:  # empty or ragged: a list of rows, as the record held them
            out.append([values[mid[k] : mid[k + 1]] for k in range(a, b)])
    return out


def _extras(column: pa.ChunkedArray) -> list[list[dict[str, Any]]]:
    """The ``clip_extras`` of each record: dicts whose float lists are float32 arrays."""
    lists = column.combine_chunks()
    offsets = lists.offsets.to_numpy()
    flat = lists.flatten()  # every record's extras, in order
    names = [f.name for f in flat.type]
    children = dict(zip(names, flat.flatten()))
    values = {
        name: _list_arrays(child) if name in _ARRAY_EXTRAS else child.to_pylist()
        for name, child in children.items()
    }
    rows = [{name: values[name][k] for name in names} for k in range(len(flat))]
    valid = lists.is_valid().to_numpy(zero_copy_only=False)
    return [rows[offsets[i] : offsets[i + 1]] if valid[i] else [] for i in range(len(lists))]


def read_records(file: str, rows: Sequence[int]) -> Iterator[dict[str, Any]]:
    """The records at ``rows`` of one work file, as the corpus phase takes them: the videos
    row, the clips with their extras joined (:func:`curate.work.joined_clips`; the extras'
    float lists as arrays) and the failures rows."""
    table = pq.ParquetFile(file).read().take(pa.array(list(rows), pa.int64()))
    ids = table.column("video_id").to_pylist()
    videos = table.column("video").to_pylist()
    clips = table.column("clips").to_pylist()
    failures = table.column("failures").to_pylist()
    extras = _extras(table.column("clip_extras"))
    del table
    for i, video_id in enumerate(ids):
        yield {
            "video_id": video_id,
            "video": videos[i],
            "clips": joined_clips({"clips": clips[i], "clip_extras": extras[i]}),
            "failures": failures[i] or [],
        }


def _read_light(file: str, rows: Sequence[int], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Some nested columns of the records at ``rows`` (``clips.list.element.status``), the
    clips joined with their extras."""
    table = pq.ParquetFile(file).read(columns=list(columns)).take(pa.array(list(rows), pa.int64()))
    data = table.to_pydict()
    out = []
    for i in range(table.num_rows):
        record = {k: data[k][i] for k in data}
        out.append({"clips": joined_clips(record)})
    return out
