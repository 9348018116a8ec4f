"""What tokenweight refuses to load or execute: pickled weights, a model's own code, pickles."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from tokenweight.models import ModelError, load_model

SOURCE = Path(__file__).resolve().parents[1] / "tokenweight"


def test_a_model_with_only_pickled_weights_is_refused(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, model_dir)
    state = load_model(tiny_model_dir).state_dict()
    (model_dir / "model.safetensors").unlink()
    torch.save(state, model_dir / "pytorch_model.bin")
    with pytest.raises(ModelError, match="cannot load safetensors weights"):
        load_model(str(model_dir))


@pytest.mark.parametrize("model_type", ["llama", "tw-custom"])
def test_a_model_that_ships_its_own_code_is_not_run(tiny_model_dir, tmp_path, model_type):
    """trust_remote_code is off unless the config asks: a known architecture loads with the library's
    own class, an unknown one is refused, and the model's code never runs."""
    model_dir = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, model_dir)
    marker = tmp_path / "code-ran"
    for name in ("custom_config", "custom_model"):
        (model_dir / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((model_dir / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "custom_config.C", "AutoModelForCausalLM": "custom_model.M"}
    (model_dir / "config.json").write_text(json.dumps(config))
    if model_type == "llama":
        assert type(load_model(str(model_dir))).__name__ == "LlamaForCausalLM"
    else:
        with pytest.raises((ValueError, ModelError, KeyError)):
            load_model(str(model_dir))
    assert not marker.exists()


def test_no_module_unpickles():
    """torch.load only with weights_only=True, and no pickle at all: weights are safetensors."""
    for path in SOURCE.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert not re.search(r"^\s*(import pickle|from pickle|import dill|import cloudpickle)", text, re.M), path
        assert "trust_remote_code=True" not in text, f"{path} turns trust_remote_code on by itself"
