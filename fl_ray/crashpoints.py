"""Named crash points for fault-injection tests of the coordinator.

``FL_RAY_CRASH_AT=<point>:<round>`` makes the process that reaches that point SIGKILL itself --
a real, unclean death (no finally blocks, no flushes), exactly like a node losing power.
Points: ``start`` (before dispatch), ``dispatch`` (silos are training), ``collected`` (updates
arrived, nothing written), ``write`` (half of the round directory is on disk).
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "FL_RAY_CRASH_AT"


def crash_point(point: str, round_num: int) -> None:
    if os.environ.get(CRASH_ENV) == f"{point}:{round_num}":
        os.kill(os.getpid(), signal.SIGKILL)
