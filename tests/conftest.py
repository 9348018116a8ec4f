"""Shared fixtures: the real SmolLM2 tokenizer, a tiny random Llama that uses it, chat data, Prefect.
(The plain helpers they are built on, and that tests import, are in tests/helpers.py.)

The tokenizer (and, for the slow tests, the converted SmolLM2 store) are cached across pytest
sessions under the pytest cache directory, so repeated runs skip the ~15 s GGUF tokenizer load.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread: the tensors here are tiny, and on a shared 2-core machine two spinning
# OpenMP threads competing with other processes make the matmuls 30x slower, not faster.
torch.set_num_threads(1)

from helpers import (  # noqa: E402
    GGUF_FILE,
    atomic_dir,
    cache_dir,
    chat_rows,
    make_tiny_model,
    point_prefect_console_at,
    smollm2_package_dir,
    write_jsonl,
)


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

        atomic_dir(final, build)
    return str(final)


@pytest.fixture(scope="session")
def smol_tokenizer(smol_tokenizer_dir):
    from tokenweight.models import load_tokenizer

    return load_tokenizer(smol_tokenizer_dir)


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


@pytest.fixture
def chat_jsonl(tmp_path) -> str:
    return write_jsonl(tmp_path / "chat.jsonl", chat_rows(12))


@pytest.fixture(scope="session")
def prefect_harness():
    """One throwaway Prefect database for the session (real flow and task runs)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def prefect_capfd(capfd):
    """capfd for tests that run flows. Prefect's console handler is made lazily, bound to the
    sys.stderr of that moment (a capture that pytest closes after the test); point it at the real
    stderr (fd 2, which capfd captures) before and after each test, so no test writes to a
    closed capture."""
    import sys

    point_prefect_console_at(sys.__stderr__)
    yield capfd
    point_prefect_console_at(sys.__stderr__)
