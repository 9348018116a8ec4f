"""Named crash points, for the fault tests: a real `kill -9` at a chosen place in a real run.

`TOKENWEIGHT_FAULT=score.mid_shard@2` makes the process SIGKILL itself the second time it reaches
the point `score.mid_shard` (`@1` when no count is given). Unset, a point costs one dict lookup.
With `TOKENWEIGHT_FAULT_ONCE=/some/file` as well, only the first process to reach the point creates
that file and dies: a pool of workers started with the same environment loses one worker, once.
The points are listed in `POINTS`; tests/test_crash_resume.py kills a pipeline at each of them.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

# Where a stage can be killed; `{stage}` is any stage name (and base_model).
POINTS = (
    "{stage}.shard_task",  # a shard being computed (on a Dask worker under runner.kind dask)
    "{stage}.mid_shard",  # a shard file half-written under its temporary name
    "{stage}.shard_done",  # a shard renamed into the staging directory, the next not begun
    "{stage}.mid_commit",  # the first file moved into the output directory, the others not
    "{stage}.before_manifest",  # every file in place, the manifest not yet written
    "discriminator.step",  # after an optimiser step of the discriminator's fine-tune
    "finetune.step",  # after an optimiser step of the fine-tune
    "finetune.mid_checkpoint",  # a checkpoint's weights saved, its optimiser and state not
)

_seen: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """SIGKILL this process if TOKENWEIGHT_FAULT names this point and its count is reached."""
    spec = os.environ.get("TOKENWEIGHT_FAULT")
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    _seen[name] += 1
    if _seen[name] != int(nth or 1):
        return
    once = os.environ.get("TOKENWEIGHT_FAULT_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # another process took this fault already
    os.kill(os.getpid(), signal.SIGKILL)
