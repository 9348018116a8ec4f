"""The real SmolLM2 GGUF path: converted once into the store, loads, and scores real BFCL samples
sensibly. Slow (the first conversion takes about a minute; the converted store is cached across
pytest sessions under the pytest cache)."""

import glob
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from tokenweight.config import ModelConfig, parse_config
from tokenweight.components.chat_encode import encode_conversation
from tokenweight.components.score_tokens import score_rows
from tokenweight.models import load_model, load_tokenizer, resolve_base_model
from tokenweight.store import MANIFEST, Store, verify_output
from tokenweight.stage_protocol import run_stage
from tokenweight.tasks.prepare import PREPARE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smol_store(request, tmp_path_factory):
    """A store holding the converted SmolLM2 (the store's own manifest makes the conversion atomic)."""
    from helpers import cache_dir

    root = cache_dir(request, tmp_path_factory, "smollm2-store")
    store = Store(str(root))
    base = resolve_base_model(ModelConfig(), store)
    return store, base


@pytest.fixture(scope="session")
def smol_model(smol_store):
    _, base = smol_store
    return load_model(base.path)


def test_gguf_is_converted_once_into_the_store(smol_store):
    store, base = smol_store
    manifest_path = os.path.join(base.path, MANIFEST)
    assert os.path.isfile(manifest_path)
    assert os.path.isfile(os.path.join(base.path, "model.safetensors"))
    assert base.path == store.stage_uri("base_model", base.key)
    manifest, _ = verify_output(store, "base_model", base.key)
    assert manifest["model"] == "smollm2-135m-instruct" and "model.safetensors" in manifest["files"]
    mtime = os.stat(manifest_path).st_mtime_ns
    again = resolve_base_model(ModelConfig(), store)
    assert again == base
    assert os.stat(manifest_path).st_mtime_ns == mtime  # not converted again
    assert not glob.glob(os.path.join(os.path.dirname(base.path), "*", ".tmp-*"))


def test_converted_model_loads_with_its_tokenizer(smol_store, smol_model):
    _, base = smol_store
    tok = load_tokenizer(base.path)
    assert len(tok) == 49152 and tok.chat_template is not None
    cfg = smol_model.config
    assert cfg.model_type == "llama" and cfg.num_hidden_layers == 30 and cfg.hidden_size == 576
    assert not hasattr(cfg, "quantization_config") or cfg.quantization_config is None


def test_real_bfcl_samples_score_sensibly(smol_store, smol_model, tmp_path):
    _, base = smol_store
    cfg = parse_config({
        "store": str(tmp_path / "store"),
        "model": {"name": base.path},
        "prepare": {"source": {"kind": "bfcl", "categories": ["simple_python"], "limit_per_category": 3},
                    "max_tokens": 1024},
    })
    local = resolve_base_model(cfg.model, Store(cfg.store))
    record = run_stage(PREPARE, cfg, Store(cfg.store), base=local)
    rows = [r for p in sorted(glob.glob(f"{record.uri}/part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 3
    tok = load_tokenizer(base.path)
    ids, masks = [r["input_ids"] for r in rows], [r["loss_mask"] for r in rows]
    scores = score_rows({"base": smol_model, "disc": smol_model}, ids, masks, tok.pad_token_id,
                        batch_tokens=4096, chunk_rows=256)
    for r, loss, disc in zip(rows, scores["base"], scores["disc"]):
        mask = np.asarray(r["loss_mask"]) == 1
        assert mask.sum() > 3
        assert np.all(np.isfinite(loss)) and np.all(loss[~mask] == 0) and np.all(loss[mask] > 0)
        np.testing.assert_array_equal(loss, disc)  # the same model twice scores the same
        call = json.loads(r["meta"])["ground_truth"]
        assert call  # the target is BFCL's ground-truth call
        assert float(loss[mask].mean()) < 5.0, (r["id"], float(loss[mask].mean()))


def test_a_few_rft_steps_on_real_bfcl_answers_lower_their_loss_and_the_answers_check(smol_store, tmp_path):
    """SmolLM2, 8 BFCL questions: 4 rft steps on the top blocks lower the loss of those answers, and
    the ground-truth answers pass the eval stage's BFCL check."""
    from tokenweight.config import FinetuneConfig
    from tokenweight.sources.bfcl import answer_text, read_bfcl
    from tokenweight.components.heldout_loss import heldout_losses
    from tokenweight.evals.answer_check import check_answer
    from tokenweight.components.trainer_setup import train_model

    store, base = smol_store
    tokenizer = load_tokenizer(base.path)
    samples = list(read_bfcl(["simple_python"], 8))
    rows = []
    for s in samples:
        enc = encode_conversation(tokenizer, s.messages)
        # Values (digits, letters inside the call) as reasoning, punctuation as boilerplate: a fixed split.
        classes = [int(any(ch.isalnum() for ch in tokenizer.decode([t]))) for t in enc.input_ids]
        rows.append({"input_ids": enc.input_ids, "loss_mask": enc.loss_mask, "token_class": classes,
                     "weight": [1.0] * len(enc.input_ids)})
        assert check_answer(answer_text(s.meta["ground_truth"]), s.meta)[1] is True
    fc = FinetuneConfig(method="rft", max_steps=4, batch_size=4, grad_accum=1, learning_rate=2e-4,
                        warmup_share=0.0, train_layers=6)
    before = heldout_losses(load_model(base.path), rows, tokenizer.pad_token_id, 4096)
    model, _, info = train_model(fc, rows, base.path, tmp_path / "work")
    after = heldout_losses(model, rows, tokenizer.pad_token_id, 4096)
    assert info["steps"] == 4
    def mean(losses):  # over both classes: loss sums / token counts
        return (losses[:, 0].sum() + losses[:, 2].sum()) / (losses[:, 1].sum() + losses[:, 3].sum())

    assert mean(after) < 0.8 * mean(before), (mean(before), mean(after))
