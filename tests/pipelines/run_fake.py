"""``python -m tests.pipelines.run_fake BEAM_FLAGS...``: the curate run with the fake steps.

Used by tests that must run the pipeline in a process they can kill.
"""

from __future__ import annotations

import sys

from pipelines.curate import run
from tests.pipelines.fakes import fake_components

if __name__ == "__main__":
    summary = run(sys.argv[1:], components=fake_components(), progress=False)
    print("\n".join(summary.lines()))
