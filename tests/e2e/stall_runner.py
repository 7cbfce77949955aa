"""infra/runner.py with the stall sweep's idle threshold set from E2E_STALL_AFTER_S (seconds).

The scheduled sweep (`requeue_stalled`, every RUNNER_SWEEP_S in the runner) enqueues again the
chunks of jobs that made no progress for `chalicelib.jobs.STALL_AFTER_S` (600 s, not a setting).
The LocalStack-restart test needs it to act within seconds, so it starts the runner through
this file, which sets that module constant in the runner's process before running it.

    E2E_STALL_AFTER_S=5 RUNNER_SWEEP_S=2 python tests/e2e/stall_runner.py
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from chalicelib import jobs  # noqa: E402

if not hasattr(jobs, "STALL_AFTER_S"):
    sys.exit("chalicelib.jobs.STALL_AFTER_S is gone: update tests/e2e/stall_runner.py")
jobs.STALL_AFTER_S = float(os.environ["E2E_STALL_AFTER_S"])
runpy.run_path(str(ROOT / "infra" / "runner.py"), run_name="__main__")
