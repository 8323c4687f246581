"""A curate run as one self-contained HTML page (``OUT/report.html``).

Every ``curate run`` writes it and ``curate report RUN`` writes it again. The page holds
everything inline (CSS, a few lines of script, images as ``data:`` URIs), so it opens offline
and can be mailed or archived as one file. It shows:

- the counts and the invariant, the run's settings;
- the caption-score histogram with the cut-off;
- where the time went, per stage (kept beside the report in ``_timing.json``, since only the
  run itself can measure it);
- for each drop reason, and for the kept clips, a grid of thumbnails with caption and score;
- stories as timelines: one bar per segment, coloured by its clips' status, with its prompt
  and a keyframe;
- duplicate groups side by side, and the failures table.

Its size does not grow with the run: thumbnails, stories and duplicate groups are seeded
samples of fixed size, and the failures table lists the first rows (paged), after the
complete count per stage and error. Counts and the histogram always cover every clip.
Thumbnails come from the clips' stored keyframes when the run kept them, else from the
source videos (one middle frame per clip or segment, decoded at thumbnail size).
"""

from __future__ import annotations

from .markup import histogram_svg
from .page import (
    CLIP_COLUMNS,
    ReportLimits,
    build_run_report,
    load_timing,
    report_after_run,
    report_numbers,
    save_timing,
    write_run_report,
)
from .thumbnails import Thumbnails

__all__ = [
    "CLIP_COLUMNS",
    "ReportLimits",
    "Thumbnails",
    "build_run_report",
    "histogram_svg",
    "load_timing",
    "report_after_run",
    "report_numbers",
    "save_timing",
    "write_run_report",
]
