"""Key invalidation through the real task key functions: a change re-runs its stage and every
stage after it, nothing before."""

import dataclasses
import importlib
import json
import warnings

import pytest

from helpers import chat_rows, pipeline_config, write_jsonl
from tokenweight.config import STAGES, PipelineConfig, SyntheticSource
from tokenweight.models import ModelRef, resolve_base_model
from tokenweight.sources.registry import PrepareError
from tokenweight.store import StageRecord, Store


def spec(stage):
    """The stage's declaration, looked up at call time (the version-bump test replaces it)."""
    return getattr(importlib.import_module(f"tokenweight.tasks.{stage}"), stage.upper())


def record(stage, key):
    return StageRecord(stage, key, f"/nowhere/{stage}/{key}")


def all_keys(cfg):
    base = resolve_base_model(cfg.model, Store(cfg.store))
    keys = {"prepare": spec("prepare").key(cfg, base=base)}
    prepared = record("prepare", keys["prepare"])
    keys["shuffle"] = spec("shuffle").key(cfg, prepared=prepared, base=base)
    keys["discriminator"] = spec("discriminator").key(cfg, shuffled=record("shuffle", keys["shuffle"]), base=base)
    disc = record("discriminator", keys["discriminator"])
    keys["score"] = spec("score").key(cfg, prepared=prepared, disc=disc, base=base)
    keys["critical"] = spec("critical").key(cfg, prepared=prepared, base=base)  # run for weights.method critical only
    keys["weights"] = spec("weights").key(cfg, scored=record("score", keys["score"]), prepared=prepared, disc=disc,
                                          base=base, critical=record("critical", keys["critical"]))
    return keys


def keys_to_eval(cfg):
    """all_keys plus finetune and eval (whose model input is the finetune output)."""
    keys = all_keys(cfg)
    base = resolve_base_model(cfg.model, Store(cfg.store))
    prepared, weighted = record("prepare", keys["prepare"]), record("weights", keys["weights"])
    keys["finetune"] = spec("finetune").key(cfg, prepared=prepared, weighted=weighted, base=base)
    keys["eval"] = spec("eval").key(cfg, prepared=prepared, weighted=weighted,
                                    model=ModelRef("/nowhere/model", keys["finetune"], "rft"))
    return keys


# Each stage's section and the stages that read its output (directly or through others); finetune
# here is rft, which reads the weights stage.
DOWNSTREAM = {
    "prepare": {*STAGES, "critical"},
    "shuffle": {"shuffle", "discriminator", "score", "weights", "finetune", "eval"},
    "discriminator": {"discriminator", "score", "weights", "finetune", "eval"},
    "score": {"score", "weights", "finetune", "eval"},
    "critical": {"critical"},  # under rft; under weights.method critical it reaches weights too (below)
    "weights": {"weights", "finetune", "eval"},
    "finetune": {"finetune", "eval"},
    "eval": {"eval"},
}
# The device policy reaches every stage that runs a model (and what reads their outputs).
SECTIONS = {**DOWNSTREAM, "device": {"discriminator", "score", "critical", "weights", "finetune", "eval"}}
FIELDS = [(section, field) for section in SECTIONS
          for field in type(getattr(PipelineConfig(), section)).model_fields]


# Parameters of one method, part of the key only when that method is chosen (WeightsConfig.key_settings).
METHOD_PARAMETERS = {("weights", "rho1_top_share"): "rho1", ("weights", "prefix_tokens"): "prefix",
                     ("finetune", "kl_weight"): "asft"}


@pytest.mark.parametrize("section,field", FIELDS, ids=[f"{s}.{f}" for s, f in FIELDS])
def test_every_config_field_is_in_its_stage_key_and_no_earlier_one(tiny_model_dir, tmp_path, data_file, section, field):
    cfg = pipeline_config(tiny_model_dir, tmp_path, {"kind": "file", "path": data_file})
    if (section, field) in METHOD_PARAMETERS:  # a method's own parameter is keyed under that method
        method = METHOD_PARAMETERS[(section, field)]
        cfg = cfg.model_copy(update={section: getattr(cfg, section).model_copy(update={"method": method})})
    # model_copy does not validate: any distinct value shows whether the field reaches the key;
    # a source must be a real one, whose content the key can fingerprint.
    value = SyntheticSource(n=7) if field in ("source", "eval_source") else "changed-for-the-test"
    edited = getattr(cfg, section).model_copy(update={field: value})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic warns when serialising the off-type value
        after = keys_to_eval(cfg.model_copy(update={section: edited}))
    assert changed(keys_to_eval(cfg), after) == SECTIONS[section]


@pytest.mark.parametrize("stage", list(DOWNSTREAM))
def test_a_stage_version_bump_reruns_it_and_later_stages_only(tiny_model_dir, tmp_path, data_file, stage, monkeypatch):
    cfg = pipeline_config(tiny_model_dir, tmp_path, {"kind": "file", "path": data_file})
    before = keys_to_eval(cfg)
    module = importlib.import_module(f"tokenweight.tasks.{stage}")
    monkeypatch.setattr(module, stage.upper(), dataclasses.replace(spec(stage), version=spec(stage).version + "-bumped"))
    assert changed(before, keys_to_eval(cfg)) == DOWNSTREAM[stage]


def changed(a, b):
    return {stage for stage in a if a[stage] != b[stage]}


@pytest.fixture
def data_file(tmp_path):
    return write_jsonl(tmp_path / "data.jsonl", chat_rows(6))


@pytest.mark.parametrize(
    "section,values,expected",
    [
        ("discriminator", {"learning_rate": 5e-4}, {"discriminator", "score", "weights"}),
        ("discriminator", {"reference": "base"}, {"discriminator", "score", "weights"}),
        ("discriminator", {"train_layers": None}, {"discriminator", "score", "weights"}),
        ("weights", {"margin": 0.5}, {"weights"}),
        ("weights", {"method": "uniform"}, {"weights"}),
        ("score", {"chunk_rows": 7}, {"score", "weights"}),
        ("shuffle", {"seed": 3}, {"shuffle", "discriminator", "score", "weights"}),
        ("prepare", {"max_tokens": 300}, {"prepare", "shuffle", "discriminator", "score", "critical", "weights"}),
        ("prepare", {"eval_share": 0.5}, {"prepare", "shuffle", "discriminator", "score", "critical", "weights"}),
    ],
)
def test_a_change_invalidates_its_stage_and_later_ones(tiny_model_dir, tmp_path, data_file, section, values, expected):
    src = {"kind": "file", "path": data_file}
    before = all_keys(pipeline_config(tiny_model_dir, tmp_path, src))
    after = all_keys(pipeline_config(tiny_model_dir, tmp_path, src, **{section: values}))
    assert changed(before, after) == expected


def test_keys_are_stable_across_calls_and_store_location(tiny_model_dir, tmp_path, data_file):
    src = {"kind": "file", "path": data_file}
    a = all_keys(pipeline_config(tiny_model_dir, tmp_path / "one", src))
    b = all_keys(pipeline_config(tiny_model_dir, tmp_path / "two", src))
    assert a == b and len(set(a.values())) == 6


def test_editing_the_data_file_in_place_changes_the_prepare_key(tiny_model_dir, tmp_path, data_file):
    cfg = pipeline_config(tiny_model_dir, tmp_path, {"kind": "file", "path": data_file})
    before = all_keys(cfg)
    rows = chat_rows(6)
    rows[2]["messages"][-1]["content"] += " (edited)"
    write_jsonl(tmp_path / "data.jsonl", rows)
    after = all_keys(cfg)
    assert changed(before, after) == set(before)  # prepare, and so everything after it


def test_a_different_model_directory_content_changes_every_key(tiny_model_dir, tmp_path, data_file):
    import shutil

    copy_dir = tmp_path / "model-copy"
    shutil.copytree(tiny_model_dir, copy_dir)
    src = {"kind": "file", "path": data_file}
    a = all_keys(pipeline_config(tiny_model_dir, tmp_path, src))
    b = all_keys(pipeline_config(str(copy_dir), tmp_path, src))
    assert a == b  # same content, other path: same keys
    cfg = json.loads((copy_dir / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5
    (copy_dir / "config.json").write_text(json.dumps(cfg))
    c = all_keys(pipeline_config(str(copy_dir), tmp_path, src))
    assert changed(a, c) == set(a)


def test_prepare_key_of_a_missing_file_is_a_prepare_error(tiny_model_dir, tmp_path):
    cfg = pipeline_config(tiny_model_dir, tmp_path, {"kind": "file", "path": str(tmp_path / "gone.jsonl")})
    base = resolve_base_model(cfg.model, Store(cfg.store))
    with pytest.raises(PrepareError, match="gone.jsonl: data file not found"):
        spec("prepare").key(cfg, base=base)


@pytest.mark.parametrize("section,field", list(METHOD_PARAMETERS))
def test_a_method_parameter_is_not_in_the_key_of_another_method(tiny_model_dir, tmp_path, data_file, section, field):
    cfg = pipeline_config(tiny_model_dir, tmp_path, {"kind": "file", "path": data_file})
    edited = cfg.model_copy(update={section: getattr(cfg, section).model_copy(update={field: 0.123})})
    assert keys_to_eval(edited) == keys_to_eval(cfg)  # method rft: the parameter changes nothing


def test_under_critical_weights_a_critical_setting_reaches_the_weights_and_later(tiny_model_dir, tmp_path, data_file):
    cfg = pipeline_config(tiny_model_dir, tmp_path, {"kind": "file", "path": data_file}, weights={"method": "critical"},
                          finetune={"method": "weighted"})
    edited = cfg.model_copy(update={"critical": cfg.critical.model_copy(update={"rule": "any"})})
    assert changed(keys_to_eval(cfg), keys_to_eval(edited)) == {"critical", "weights", "finetune", "eval"}


def test_min_gap_is_keyed_only_when_on(tiny_model_dir, tmp_path, data_file):
    # 0 classes exactly as before the setting existed: a store made then keeps its weights keys.
    cfg = pipeline_config(tiny_model_dir, tmp_path, {"kind": "file", "path": data_file})
    assert cfg.weights.min_gap == 0 and "min_gap" not in cfg.weights.key_settings()
    on = cfg.model_copy(update={"weights": cfg.weights.model_copy(update={"min_gap": 0.3})})
    assert on.weights.key_settings()["min_gap"] == 0.3
    assert changed(keys_to_eval(cfg), keys_to_eval(on)) == {"weights", "finetune", "eval"}
