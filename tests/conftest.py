"""Fixtures shared by every test package.

* Any test that logs at ERROR level fails, unless it is marked ``allow_error_logs`` or asks
  for the ``allow_error_logs`` fixture: an error log nobody expected is a bug.
* ``shapes_corpus`` / ``shapes_corpus_path``: a small shapes-world corpus with exact ground
  truth, generated once per session. It always holds a fade, a dissolve, a 29.97 fps video,
  every caption-noise kind and at least one near-duplicate.
* ``tiny_video``: a factory that writes one short shapes-world video of given scenes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

#: settings of the session corpus; tests may read them (e.g. to regenerate it)
SHAPES_CORPUS_SETTINGS: dict[str, Any] = {
    "videos": 8,
    "seed": 1234,
    "noise_rate": 0.5,
    "duplicate_rate": 0.15,
    "transition_rate": 0.4,
    "resolutions": ["160x120", "284x160"],
    "max_scenes": 4,
    "scene_seconds": (1.6, 3.0),
    "ensure_variety": True,
    "workers": 1,  # small enough that starting worker processes would cost more than it saves
    "progress": False,
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_error_logs: the test expects ERROR log records; do not fail on them"
    )


@pytest.fixture
def allow_error_logs() -> None:
    """Request this fixture (or use the marker) in a test that expects ERROR logs."""


@pytest.fixture(autouse=True)
def _fail_on_error_logs(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    yield
    if request.node.get_closest_marker("allow_error_logs") or (
        "allow_error_logs" in request.fixturenames
    ):
        return
    errors = [
        r
        for when in ("setup", "call")
        for r in caplog.get_records(when)  # type: ignore[arg-type]
        if r.levelno >= logging.ERROR
    ]
    if errors:
        lines = "\n".join(f"  {r.name}: {r.getMessage()}" for r in errors)
        pytest.fail(
            f"test logged {len(errors)} ERROR record(s) (mark it allow_error_logs if "
            f"expected):\n{lines}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def shapes_corpus(tmp_path_factory: pytest.TempPathFactory):
    """Ground truth (a ``curate.shapes.GroundTruth`` with ``.root``) of the session corpus."""
    from curate.shapes import generate_corpus

    root = tmp_path_factory.mktemp("shapes_corpus")
    return generate_corpus(root, **SHAPES_CORPUS_SETTINGS)


@pytest.fixture(scope="session")
def shapes_corpus_path(shapes_corpus) -> Path:
    """Root folder of the session corpus (``videos/``, ``webvid.csv``, ``manifest.jsonl``...)."""
    return Path(shapes_corpus.root)


@pytest.fixture
def tiny_video(tmp_path: Path) -> Callable[..., Any]:
    """Factory: ``tiny_video(["a red circle moving left on a navy background", ...],
    fps=25, width=160, height=120, scene_frames=48, transitions=["cut"], name="v")`` writes
    ``tmp_path/<name>.mp4`` and returns its ``VideoTruth`` (``.path`` is the file)."""
    from curate.shapes import make_video

    counter = iter(range(1_000_000))

    def make(scenes: Any, *, name: str | None = None, **kwargs: Any):
        file = tmp_path / f"{name or f'tiny_{next(counter)}'}.mp4"
        return make_video(file, scenes, **kwargs)

    return make
