"""``curate report RUN``: write a run's HTML report again (``curate run`` writes it too).

The report library (:mod:`curate.report`) is imported when the command runs, so that
``curate --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from schemas import SchemaError

EPILOG = """\
examples:
  curate report demo-out/curated                       # rewrites demo-out/curated/report.html
  curate report out/runs/first --out out/first-report.html --stories 100

The page is one self-contained file (images inline, no network): counts and the invariant,
the caption-score histogram with the cut-off, time per stage, thumbnails per drop reason and
of kept clips, stories as timelines, duplicate groups and the failures table. Large runs are
sampled (seeded), so the file stays a few MB whatever the run's size.
"""


def register(subparsers: Any) -> None:
    report = subparsers.add_parser(
        "report",
        help="write a run's self-contained HTML report (RUN/report.html)",
        description=(
            "Write the HTML report of a curate run folder: what was kept and dropped and why, "
            "with thumbnails, the score histogram, story timelines, duplicates and failures."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("folder", help="the --output folder of a curate run")
    report.add_argument("--out", help="where to write the page (default: FOLDER/report.html)")
    report.add_argument(
        "--per-group", type=int, default=24, help="thumbnails per drop reason and of kept clips"
    )
    report.add_argument("--stories", type=int, default=40, help="stories drawn as timelines")
    report.add_argument("--seed", type=int, default=0, help="seed of the samples")
    report.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    from curate.report import ReportLimits, write_run_report

    for name in ("per_group", "stories"):
        if getattr(args, name) < 0:
            flag = "--" + name.replace("_", "-")
            print(f"curate report: {flag} must be >= 0, got {getattr(args, name)}", file=sys.stderr)
            return 2
    limits = ReportLimits(per_group=args.per_group, stories=args.stories, seed=args.seed)
    try:
        path = write_run_report(args.folder, args.out, limits=limits)
    except (SchemaError, OSError) as exc:
        print(f"curate report: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
