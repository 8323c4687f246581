"""Domain exceptions of the curation steps.

Every exception carries the input it is about (``uri`` and, where known, ``video_id``), the
``stage`` that raised it and a one-line ``reason``. The Beam adapters turn them into failures
rows without losing any of that.
"""

from __future__ import annotations


class CurateError(Exception):
    """Base class: something about one input stopped one stage."""

    stage: str = "curate"

    def __init__(
        self,
        reason: str,
        *,
        uri: str | None = None,
        video_id: str | None = None,
        stage: str | None = None,
    ) -> None:
        self.reason = reason
        self.uri = uri
        self.video_id = video_id
        if stage is not None:
            self.stage = stage
        where = f"{uri}: " if uri else ""
        super().__init__(f"{where}{reason}")

    def __reduce__(self):  # keep kwargs across pickling (multiprocessing, Beam)
        return (_rebuild, (type(self), self.reason, self.uri, self.video_id, self.stage))


def _rebuild(cls, reason, uri, video_id, stage):
    return cls(reason, uri=uri, video_id=video_id, stage=stage)


# --- video I/O (stage "probe" / "decode") -------------------------------------------------


class VideoError(CurateError):
    stage = "probe"


class VideoOpenFailure(VideoError):
    """The file is missing, empty, not a container, or the demuxer refused it."""


class NoVideoStream(VideoError):
    """The container opened but holds no video stream (e.g. audio only)."""


class ZeroFrames(VideoError):
    """The video stream decodes to no frame at all."""


class TooFewFrames(VideoError):
    """The video has fewer frames than the stage needs (e.g. a one-frame video)."""


class TruncatedVideo(VideoError):
    """Decoding stopped before the frame count the container declares."""

    stage = "decode"


class UnsupportedCodec(VideoError):
    """The stream's codec cannot be decoded here."""


class AbsurdSize(VideoError):
    """The declared frame size is out of any sane range (e.g. 100000x100000)."""


# --- captions and models --------------------------------------------------------------------


class CaptionError(CurateError):
    """A caption cannot be used (empty, invalid text, ...)."""

    stage = "caption"


class ModelFolderError(CurateError):
    """A model folder is missing or incomplete; the reason names the missing file."""

    stage = "load-model"


class ManifestError(CurateError):
    """A manifest cannot be read at all (as opposed to one bad row)."""

    stage = "read-manifest"


class OutputError(CurateError):
    """The output location cannot be written."""

    stage = "write"
