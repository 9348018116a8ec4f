"""What every benchmark shares: isolated runs, repeats and medians, peak memory, the machine, the
report table and the JSON line.

Each measured variant runs in a fresh spawned process, so that one variant's allocator caches and
page faults never count for (or against) another. Peak memory is the high-water mark of the
process's resident set (Linux `VmHWM`, reset through `/proc/self/clear_refs`) above what it held
just before the measured work began, or `torch.cuda.max_memory_allocated` above the allocated
bytes on a GPU: the memory the work itself needs, not the model it was handed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).with_name("results.jsonl")


def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


class PeakMemory:
    """Peak bytes above the starting point, over a `with` block (CPU: resident set; GPU: allocator)."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
            self.start = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.peak = _status_kib("VmHWM") * 1024 - self.start


def timed(fn: Callable[[], Any], device: str = "cpu") -> tuple[float, Any]:
    """Wall seconds of one call (synchronising the GPU around it) and its result."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


@dataclass
class Measured:
    """One variant's figures: seconds of each timed repeat, peak bytes, and what else it reports."""

    seconds: list[float]
    peak_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def repeat(fn: Callable[[], Any], warmup: int, repeats: int, device: str = "cpu") -> tuple[Measured, Any]:
    """Warm up, then time `repeats` calls; peak memory over all calls, warm-up included (the first
    call is the one that allocates)."""
    with PeakMemory(device) as mem:
        for _ in range(warmup):
            out = fn()
        seconds = []
        for _ in range(repeats):
            s, out = timed(fn, device)
            seconds.append(s)
    return Measured(seconds, mem.peak), out


def _child(target: Callable[..., Measured], kwargs: dict[str, Any], queue) -> None:
    try:
        queue.put(("ok", target(**kwargs)))
    except BaseException as err:  # reported to the parent, which raises it
        import traceback

        queue.put(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))


def isolated(target: Callable[..., Measured], **kwargs: Any) -> Measured:
    """Run `target(**kwargs)` (a module-level function returning Measured) in a fresh process."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target, kwargs, queue))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{target.__name__} failed in its process:\n{value}")
    return value


def set_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def block_flops(config, rows) -> float:
    """One transformer block's forward FLOPs over these rows: its matrix products per token and
    causal attention (QK^T and AV) per row."""
    h = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    linear = 2 * (h * q + 2 * h * kv + q * h + 3 * h * config.intermediate_size)  # per token
    return float(sum(linear * len(r) + 2 * q * len(r) * (len(r) + 1) for r in rows))


def matmul_flops(threads: int | None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[float, int]:
    """This machine's measured matrix-product rate (FLOP/s) on square n x n products (median), and n."""
    set_threads(threads)
    n = 8192 if device == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    measured, _ = repeat(lambda: a @ b, warmup=2, repeats=7, device=device)
    return 2 * n**3 / measured.median, n


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("torch", "transformers", "trl", "triton", "tokenweight")},
    }


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def weight_shards(weights_dir: Path) -> list[Path]:
    """A weights stage output's Parquet shards, or a clear exit when the directory is not one."""
    shards = sorted(Path(weights_dir).glob("part-*.parquet"))
    if not shards:
        raise SystemExit(f"{weights_dir}: no part-*.parquet; give a weights stage's output directory")
    return shards


def train_rows(weights_dir: Path, columns: list[str]) -> Iterator[dict[str, Any]]:
    """The train split's rows of a weights stage output (what the fine-tune weighs), shard by shard."""
    import pyarrow.parquet as pq  # only the benchmarks that read shards need pyarrow

    for shard in weight_shards(weights_dir):
        for row in pq.read_table(shard, columns=["split", *columns]).to_pylist():
            if row["split"] == "train":
                yield row


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(f"\n{title}\n" + line(header) + "\n|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


def record(benchmark: str, settings: dict[str, Any], results: dict[str, Any], path: Path = RESULTS) -> None:
    """Append one JSON line: when, the machine, the settings and the figures."""
    line = {"benchmark": benchmark, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
            "settings": settings, "results": results}
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(f"\nappended to {path}")
