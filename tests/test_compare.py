"""`compare` end to end on the tiny model under a real Prefect: shared stages, arms, eval, table."""

import json
import math
from pathlib import Path

import polars as pl
import pytest

from helpers import pipeline_config
from tokenweight.schemas import PREDICTIONS

BFCL = {"kind": "bfcl", "categories": ["simple_python", "parallel"], "limit_per_category": 10}


@pytest.fixture(scope="module")
def compare_run(prefect_harness, tiny_model_dir, tmp_path_factory):
    from tokenweight.flows.compare import compare

    store = tmp_path_factory.mktemp("store-compare")
    cfg = pipeline_config(tiny_model_dir, store, source=BFCL, prepare={"eval_share": 0.3},
                          compare={"bootstrap": 200})
    return cfg, store, compare(cfg)


def test_every_arm_and_the_base_model_are_evaluated_on_the_same_samples(compare_run):
    cfg, store, result = compare_run
    assert set(result["finetune"]) == {"sft", "rft"}
    assert set(result["eval"]) == {"base", "sft", "rft"}
    ids = {}
    for name, record in result["eval"].items():
        table = pl.read_parquet(f"{record.uri}/predictions.parquet")
        assert table.columns == PREDICTIONS.names
        ids[name] = table["id"].to_list()
        assert table["task"].str.starts_with("bfcl:").all()
        assert table["correct"].null_count() == 0  # every BFCL sample is checked
        metrics = json.loads(Path(record.uri, "metrics.json").read_text())
        assert metrics["model"]["name"] == name and metrics["checked"] == len(table)
        assert metrics["heldout_loss"]["boilerplate"] > 0 and metrics["heldout_loss"]["reasoning"] > 0
    assert ids["sft"] == ids["rft"] == ids["base"] and len(ids["sft"]) > 0


def test_the_base_rows_held_out_loss_is_the_one_the_score_stage_already_has(compare_run):
    """The run summary's "base model -> tuned" reads the base's held-out class losses from the weight
    shards (no model run): they are the eval stage's own for the base model, token for token."""
    from tokenweight.evals.answer_check import base_heldout_loss

    cfg, store, result = compare_run
    base_eval = Path(result["eval"]["base"].uri)
    ids = set(pl.read_parquet(base_eval / "predictions.parquet")["id"].to_list())
    from_scores = base_heldout_loss(Path(result["shared"]["weights"].uri), ids)
    measured = json.loads((base_eval / "metrics.json").read_text())["heldout_loss"]
    for cls in ("boilerplate", "reasoning"):
        assert from_scores[cls] == pytest.approx(measured[cls], abs=2e-4)
    assert base_heldout_loss(Path(result["shared"]["weights"].uri), set()) == {"boilerplate": None, "reasoning": None}


def test_arms_share_every_stage_before_the_fine_tune_and_differ_after(compare_run):
    cfg, store, result = compare_run
    sft, rft = result["finetune"]["sft"], result["finetune"]["rft"]
    assert sft.key != rft.key
    sft_manifest = json.loads(Path(sft.uri, "_manifest.json").read_text())
    rft_manifest = json.loads(Path(rft.uri, "_manifest.json").read_text())
    # sft trains on the prepared data alone; rft on the weights stage's classes.
    assert sft_manifest["inputs"] == {"prepare": result["shared"]["prepare"].key,
                                      "base_model": sft_manifest["inputs"]["base_model"]}
    assert rft_manifest["inputs"]["weights"] == result["shared"]["weights"].key
    assert sft_manifest["config"]["method"] == "sft" and rft_manifest["config"]["method"] == "rft"
    assert (Path(rft.uri) / "model" / "model.safetensors").is_file()


def test_the_table_has_each_metric_with_an_interval_against_sft(compare_run):
    cfg, store, result = compare_run
    table_dir = Path(result["compare"].uri)
    data = json.loads((table_dir / "table.json").read_text())
    rows = {r["arm"]: r for r in data["rows"]}
    assert set(rows) == {"base", "sft", "rft"} and data["baseline"] == "sft"
    assert "accuracy_diff" not in rows["sft"]
    for arm in ("base", "rft"):
        for metric in ("accuracy", "loss_boilerplate", "loss_reasoning"):
            d = rows[arm][f"{metric}_diff"]
            assert d["low"] <= d["value"] <= d["high"]
            assert d["value"] == pytest.approx(rows[arm][metric] - rows["sft"][metric])
    assert rows["base"]["train_seconds"] is None and rows["rft"]["train_seconds"] > 0
    text = (table_dir / "table.md").read_text()
    assert "| rft |" in text and "95% paired-bootstrap" in text


def test_the_table_is_a_prefect_artifact(compare_run):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    cfg, store, result = compare_run

    async def latest():
        # Other tests' compare runs publish under the same key: take the newest, by creation time.
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["tokenweight-compare"])),
                sort=ArtifactSort.CREATED_DESC, limit=1)
            return found[0]

    import asyncio

    artifact = asyncio.run(latest())
    assert artifact.type == "table"
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert {r["arm"] for r in rows} == {"base", "sft", "rft"}


def test_a_second_compare_is_all_cached(compare_run):
    from tokenweight.flows.compare import compare

    cfg, store, first = compare_run
    again = compare(cfg)
    stages = [*again["shared"].values(), *again["finetune"].values(), *again["eval"].values(), again["compare"]]
    assert all(r.cached for r in stages)
    assert again["compare"].key == first["compare"].key


def test_a_new_arm_reuses_the_other_arms(compare_run, tiny_model_dir):
    from tokenweight.flows.compare import compare

    cfg, store, first = compare_run
    arms = [{"name": "sft", "finetune": {"method": "sft"}}, {"name": "rft", "finetune": {"method": "rft"}},
            {"name": "rft-tau1", "finetune": {"method": "rft", "tau": 1.0}}]
    cfg2 = pipeline_config(tiny_model_dir, store, source=BFCL, prepare={"eval_share": 0.3},
                           compare={"bootstrap": 200, "arms": arms})
    again = compare(cfg2)
    assert again["finetune"]["sft"].cached and again["finetune"]["rft"].cached
    assert not again["finetune"]["rft-tau1"].cached
    assert again["compare"].key != first["compare"].key


def test_token_level_methods_run_as_arms_with_their_own_weights_stage(compare_run, tiny_model_dir):
    """dft and asft (losses), rho1 and prefix (weight columns, trained with `weighted`) beside sft, on the
    shared stages: only the arms' own weights stages and fine-tunes run."""
    from tokenweight.flows.compare import compare

    cfg, store, first = compare_run
    arms = [{"name": "sft", "finetune": {"method": "sft"}},
            {"name": "dft", "finetune": {"method": "dft"}},
            {"name": "asft", "finetune": {"method": "asft", "train_layers": 2}},
            {"name": "rho1", "weights": {"method": "rho1", "rho1_top_share": 0.5}, "finetune": {"method": "weighted"}},
            {"name": "prefix", "weights": {"method": "prefix", "prefix_tokens": 4}, "finetune": {"method": "weighted"}}]
    cfg2 = pipeline_config(tiny_model_dir, store, source=BFCL, prepare={"eval_share": 0.3},
                           compare={"bootstrap": 200, "arms": arms})
    got = compare(cfg2)
    assert all(r.cached for r in got["shared"].values()) and got["finetune"]["sft"].cached
    assert set(got["weights"]) == {"rho1", "prefix"}
    assert len({got["weights"]["rho1"].key, got["weights"]["prefix"].key, first["shared"]["weights"].key}) == 3
    dft_manifest = json.loads(Path(got["finetune"]["dft"].uri, "_manifest.json").read_text())
    assert dft_manifest["inputs"]["prepare"] == first["shared"]["prepare"].key  # dft needs no SHAD output
    rho1 = pl.read_parquet(f"{got['weights']['rho1'].uri}/part-*.parquet")
    shared = pl.read_parquet(f"{first['shared']['weights'].uri}/part-*.parquet")
    assert rho1["token_class"].to_list() == shared["token_class"].to_list()  # the classes stay SHAD's
    for mask, weight in zip(rho1["loss_mask"].to_list(), rho1["weight"].to_list()):
        assert sum(w > 0 for w in weight) == math.ceil(0.5 * sum(mask))
    for name in ("rho1", "prefix"):
        manifest = json.loads(Path(got["finetune"][name].uri, "_manifest.json").read_text())
        assert manifest["inputs"]["weights"] == got["weights"][name].key
        eval_manifest = json.loads(Path(got["eval"][name].uri, "_manifest.json").read_text())
        assert eval_manifest["inputs"]["weights"] == first["shared"]["weights"].key  # classes for held-out loss
    rows = {r["arm"] for r in json.loads(Path(got["compare"].uri, "table.json").read_text())["rows"]}
    assert rows == {"base", "sft", "dft", "asft", "rho1", "prefix"}
