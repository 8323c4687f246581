"""The shape of a curation step.

A step is a small class: keyword-only settings validated in ``__init__`` (a ``ValueError`` that
quotes the value), heavy resources opened in ``setup()`` and released in ``teardown()``, and one
``process`` call from a record to zero or more records. Steps raise :mod:`curate.errors`
exceptions; the Beam adapters in ``pipelines`` turn those into failures rows.

Usable as a context manager so that resources are always released::

    with SceneSplitter(detector="fast") as split:
        for scene in split.process(record):
            ...
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Step(Generic[In, Out]):
    """Base class of every curation step."""

    #: the stage name written into failures rows
    stage: str = "step"

    def setup(self) -> None:
        """Open heavy resources (models, decoders). Called once per worker."""

    def teardown(self) -> None:
        """Release whatever ``setup`` opened. Safe to call twice."""

    def process(self, record: In) -> Iterable[Out]:
        raise NotImplementedError

    def process_all(self, records: Iterable[In]) -> Iterator[Out]:
        for record in records:
            yield from self.process(record)

    def __enter__(self) -> "Step[In, Out]":
        self.setup()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.teardown()


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise a ``ValueError`` quoting ``value`` unless it is positive (or zero if allowed)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
