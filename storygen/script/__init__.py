"""Story scripts: timed prompt sequences written by hand (YAML / JSON / SRT) or curated (Parquet).

A script is a sorted list of non-overlapping segments ``[start_s, end_s)`` with one prompt each.
Every loader collects *all* the problems of a file before raising, and each problem names the
line (YAML, JSON), cue (SRT) or story and segment (Parquet) it comes from::

    script = load_script("examples/shapes_story.yaml")
    prompts = script.prompts_per_frame(8)      # one prompt per frame at 8 fps

Modules: :mod:`.story` (:class:`StoryScript`, :class:`Segment`, :class:`ScriptError`,
:func:`parse_time` and the checks every reader ends in), one per format (:mod:`.yaml_json`,
:mod:`.subtitles` for SRT / WebVTT, :mod:`.parquet` for stories tables) and :mod:`.files`
(:func:`load_script` / :func:`save_script`: the format from the extension, or sniffed).
Every reader keeps to the bounds of :mod:`.limits` (file size, nesting, YAML aliases, segment
count) and quotes values into its messages at bounded length, so any input ends in a script or
a :class:`ScriptError`, quickly.
"""

from storygen.script.files import (
    FORMATS,
    load_script,
    save_script,
    script_format,
    script_to_text,
)
from storygen.script.parquet import script_from_stories_row
from storygen.script.story import GAP_POLICIES, ScriptError, Segment, StoryScript, parse_time

__all__ = [
    "FORMATS",
    "GAP_POLICIES",
    "ScriptError",
    "Segment",
    "StoryScript",
    "load_script",
    "parse_time",
    "save_script",
    "script_format",
    "script_from_stories_row",
    "script_to_text",
]
