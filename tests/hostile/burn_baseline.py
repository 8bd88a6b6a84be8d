"""CPU load aimed at the baseline's turns: processes forked in build() that spin exactly while the
baseline runs, so that the baseline looks slow.

The judge stops the candidate's process group while the baseline runs; these processes leave the
group (`setsid`), so they keep running, and spin whenever they see the candidate's runner stopped
(its state in /proc), which is when the baseline runs. The judge measures the CPU time of every
process descended from the candidate's runner while the baseline runs, and times the baseline
again once they are all dead: the trial is flagged (`baseline_interference`). Its answers are
honest: COMPLETE.
"""

import os
import time

from kernels import register
from tests.hostile._common import honest

BURNERS = 4


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except OSError:
        return False


def _burn(parent: int) -> None:
    os.setsid()
    while os.getppid() == parent:
        if _stopped(parent):
            deadline = time.perf_counter() + 0.0005
            while time.perf_counter() < deadline:
                pass
        else:
            time.sleep(0.0002)
    os._exit(0)


@register("hostile_burn_baseline")
def build(problem):
    parent = os.getpid()
    for _ in range(BURNERS):
        if os.fork() == 0:
            _burn(parent)

    def run(q, k, v):
        return honest(problem, q, k, v)

    return run
