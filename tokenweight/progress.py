"""Progress of long work: counts, rate and time left, to a tqdm bar and to the run's log."""

from __future__ import annotations

import time
from typing import Any

from .run_log import logger


class Progress:
    """Counts with rate and time left, to a tqdm bar on the terminal and to the run's log."""

    def __init__(self, desc: str, total: int | None, unit: str, log_every_s: float = 10.0):
        from tqdm.auto import tqdm

        self.desc, self.total, self.unit, self.log_every_s = desc, total, unit, log_every_s
        self.done, self.started, self.last_log = 0, time.time(), time.time()
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def update(self, n: int, **postfix: Any) -> None:
        self.done += n
        self.bar.update(n)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        now = time.time()
        if now - self.last_log >= self.log_every_s or self.done == self.total:
            self.last_log = now
            rate = self.done / max(now - self.started, 1e-9)
            extra = " ".join(f"{k}={v}" for k, v in postfix.items())
            if self.total:
                left = (self.total - self.done) / rate if rate > 0 else float("nan")
                logger().info("%s: %d/%d %s, %.1f %s/s, %.0fs left %s", self.desc, self.done, self.total,
                              self.unit, rate, self.unit, left, extra)
            else:
                logger().info("%s: %d %s, %.1f %s/s %s", self.desc, self.done, self.unit, rate, self.unit, extra)

    def close(self) -> float:
        self.bar.close()
        return time.time() - self.started
