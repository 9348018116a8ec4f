"""The flow end to end on the tiny model under a real (throwaway) Prefect: the weighted dataset's
contract, the summary, caching and invalidation."""

import glob
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers import DESIGN_COLUMNS, chat_rows, pipeline_config, write_jsonl
from tokenweight.config import STAGES
from tokenweight.components.token_weights import group_max, value_groups

LIST_COLUMNS = [name for name, _ in DESIGN_COLUMNS[3:]]


def run(cfg):
    from tokenweight.flows.pipeline import pipeline

    return pipeline(cfg)


def tree_digest(store):
    """sha256 of every file under the store's stage directories (Prefect's own records excluded)."""
    out = {}
    for stage in ("base_model", *STAGES):
        for path in sorted(glob.glob(f"{store}/{stage}/**/*", recursive=True)):
            if os.path.isfile(path):
                out[os.path.relpath(path, store)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def shards(weights_uri):
    return sorted(glob.glob(f"{weights_uri}/part-*.parquet"))


@pytest.fixture(scope="module")
def synthetic_run(prefect_harness, tiny_model_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("store-synthetic")
    cfg = pipeline_config(tiny_model_dir, store)
    records = run(cfg)
    return cfg, store, records, tree_digest(store)


@pytest.fixture(scope="module")
def jsonl_run(prefect_harness, tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store-jsonl")
    path = write_jsonl(tmp / "chat.jsonl", chat_rows(18))
    cfg = pipeline_config(tiny_model_dir, tmp / "store", {"kind": "file", "path": path},
                          discriminator={"reference": "base", "train_layers": None},
                          weights={"method": "uniform"})
    return cfg, run(cfg)


def check_weighted_dataset(records, method, reference):
    uri = records["weights"].uri
    paths = shards(uri)
    assert paths, f"no weight shards in {uri}"
    table = pa.concat_tables([pq.read_table(p) for p in paths])
    expected = pa.schema(DESIGN_COLUMNS)
    assert table.schema.remove_metadata().equals(expected), table.schema
    assert [f.name for f in table.schema] == [name for name, _ in DESIGN_COLUMNS]
    meta = {k.decode(): v.decode() for k, v in pq.read_schema(paths[0]).metadata.items()}
    assert meta["tokenweight.method"] == method
    assert meta["tokenweight.reference"] == reference
    assert meta["tokenweight.discriminator_key"] == records["discriminator"].key
    assert json.loads(meta["tokenweight.params"])["method"] == method
    assert {"tokenweight.version", "tokenweight.base_model", "tokenweight.base_model_key",
            "tokenweight.tokenizer_sha256"} <= set(meta)
    assert meta["tokenweight.weights_key"] == records["weights"].key
    assert not any("/" in v for k, v in meta.items() if k != "tokenweight.params"), meta  # no path of this machine
    rows = table.to_pylist()
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        n = len(r["input_ids"])
        assert all(len(r[c]) == n for c in LIST_COLUMNS), r["id"]
        assert r["split"] in ("train", "eval")
        mask = np.asarray(r["loss_mask"])
        weight = np.asarray(r["weight"], dtype=np.float64)
        classes = np.asarray(r["token_class"])
        assert mask[0] == 0 and mask.sum() > 0
        assert np.all(weight[mask == 0] == 0) and np.all(weight >= 0)
        assert weight[mask == 1].sum() == pytest.approx(1.0, abs=1e-5)
        assert np.array_equal(classes == -1, mask == 0)
        for c in ("loss_base", "loss_disc", "loss_ref"):
            loss = np.asarray(r[c])
            assert np.all(loss[mask == 0] == 0) and np.all(np.isfinite(loss))
            assert np.all(loss[mask == 1] > 0)
        ld = np.asarray(r["loss_disc"]) - np.asarray(r["loss_ref"])
        margin = 0.0
        value_ld = group_max(ld, value_groups(r["text"], r["offsets"], mask))  # granularity: value (the default)
        assert np.array_equal(classes[mask == 1] == 1, value_ld[mask == 1] > margin)
        for (s, e), tok in zip(r["offsets"], r["input_ids"]):
            assert 0 <= s <= e <= len(r["text"])
        if reference == "base":
            assert r["loss_ref"] == r["loss_base"]
    return table


def test_every_stage_ran_and_wrote_its_output(synthetic_run):
    cfg, store, records, _ = synthetic_run
    assert list(records) == list(STAGES)
    for stage, rec in records.items():
        assert rec.stage == stage and rec.cached is False
        assert rec.uri == f"{store}/{stage}/{rec.key}"
        assert os.path.isfile(f"{rec.uri}/_manifest.json")
        assert not glob.glob(f"{rec.uri}/.tmp-*")
    disc = json.load(open(f"{records['discriminator'].uri}/_manifest.json"))
    assert set(disc["trained"]) == {"disc-0", "control-0", "disc-1", "control-1"}  # two folds
    for name in disc["trained"]:
        assert os.path.isfile(f"{records['discriminator'].uri}/{name}/model.safetensors")
        assert not glob.glob(f"{records['discriminator'].uri}/{name}/*.bin")


def test_synthetic_weighted_dataset_contract(synthetic_run):
    _, _, records, _ = synthetic_run
    table = check_weighted_dataset(records, "rft", "control")
    prep = json.load(open(f"{records['prepare'].uri}/_manifest.json"))["counts"]
    assert table.num_rows == prep["accepted"] == 24


def test_rft_weights_follow_the_formula(synthetic_run):
    cfg, _, records, _ = synthetic_run
    tau = cfg.weights.tau
    for path in shards(records["weights"].uri):
        for r in pq.read_table(path).to_pylist():
            loss = np.asarray(r["loss_base"], dtype=np.float64)
            cls = np.asarray(r["token_class"])
            w = np.asarray(r["weight"], dtype=np.float64)
            b, rr = cls == 0, cls == 1
            if b.any() and rr.any():
                lb, lr = loss[b].mean(), loss[rr].mean()
                wb, wr = np.exp(np.array([lb, lr]) / tau - max(lb, lr) / tau)
                wb, wr = wb / (wb + wr), wr / (wb + wr)
                assert (w * loss).sum() == pytest.approx(wb * lb + wr * lr, rel=1e-4)
            else:
                assert np.allclose(w[cls >= 0], 1 / (cls >= 0).sum())


def test_the_same_data_written_to_two_stores_is_the_same_bytes(synthetic_run, tmp_path):
    """Nothing in a weight shard names the store it was written to (the tokenizer is recorded by
    its hash, the model by its name and key), so a copy made elsewhere is byte for byte the same."""
    cfg, store, records, _ = synthetic_run
    other = run(cfg.model_copy(update={"store": str(tmp_path / "elsewhere")}))
    assert other["weights"].key == records["weights"].key
    first, second = shards(records["weights"].uri), shards(other["weights"].uri)
    assert [Path(p).name for p in first] == [Path(p).name for p in second] and first
    for a, b in zip(first, second):
        assert Path(a).read_bytes() == Path(b).read_bytes(), a


def test_the_control_trains_on_the_same_batches_as_the_discriminator(synthetic_run):
    """One batch order for both models of a fold, from the longer rendering of each sample (the
    shuffled and the true answer differ in length, so batching each set by its own lengths would differ)."""
    from tokenweight.components.finetune_loop import TrainSettings, batch_order, order_digest

    cfg, _, records, _ = synthetic_run
    directory = Path(records["discriminator"].uri)
    trained = json.loads((directory / "_manifest.json").read_text())["trained"]
    shuffle_dir = Path(records["shuffle"].uri)
    tables = [pq.read_table(shuffle_dir / f).to_pydict() for f in ("shuffled.parquet", "matched.parquet")]
    dc = cfg.discriminator
    settings = TrainSettings(dc.epochs, dc.learning_rate, dc.warmup_share, dc.weight_decay, dc.batch_tokens,
                             dc.train_layers, dc.seed)
    for fold in range(cfg.shuffle.folds):
        lengths = [[len(r) for r, f in zip(t["input_ids"], t["fold"]) if f == fold] for t in tables]
        assert lengths[0] != lengths[1]
        expected = order_digest(batch_order([max(a, b) for a, b in zip(*lengths)], settings))
        assert trained[f"disc-{fold}"]["batches"] == trained[f"control-{fold}"]["batches"] == expected
        assert trained[f"disc-{fold}"]["steps"] == trained[f"control-{fold}"]["steps"]
        assert trained[f"disc-{fold}"]["samples"] == len(lengths[0])


def test_no_sample_is_scored_by_a_model_that_trained_on_it(synthetic_run):
    """Cross-fitting: each fold's pair trained on samples of its own part only, and every row was
    scored by another fold's pair; both parts were sampled."""
    from tokenweight.components.cross_fit import part_of, scoring_fold

    cfg, _, records, _ = synthetic_run
    shuffled = pq.read_table(Path(records["shuffle"].uri) / "shuffled.parquet").to_pydict()
    trained_on = dict(zip(shuffled["id"], shuffled["fold"]))
    assert set(trained_on.values()) == {0, 1}
    for sample_id, donor, fold in zip(shuffled["id"], shuffled["output_from"], shuffled["fold"]):
        assert part_of(sample_id, cfg.shuffle.seed, 2) == part_of(donor, cfg.shuffle.seed, 2) == fold
    score = pa.concat_tables([pq.read_table(p) for p in shards(records["score"].uri)]).to_pydict()
    for sample_id, scored_by in zip(score["id"], score["scored_by"]):
        assert scored_by == scoring_fold(sample_id, cfg.shuffle.seed, 2)
        assert trained_on.get(sample_id, -1) != scored_by, sample_id
    assert sum(i in trained_on for i in score["id"]) == len(trained_on)  # the trained-on samples were scored too


def test_losses_match_the_saved_models(synthetic_run, smol_tokenizer):
    """loss_base / loss_disc / loss_ref equal a plain forward of the models the stages saved."""
    from tokenweight.components.batching import pad_batch
    from tokenweight.components.token_loss import reference_token_losses
    from tokenweight.models import load_model

    cfg, _, records, _ = synthetic_run
    disc_dir = records["discriminator"].uri
    scored_by = pq.read_table(shards(records["score"].uri)[0]).column("scored_by").to_pylist()
    rows = pq.read_table(shards(records["weights"].uri)[0]).to_pylist()
    picked = [next(i for i, f in enumerate(scored_by) if f == fold) for fold in (0, 1)]  # one row per fold
    for i in picked:
        r, fold = rows[i], scored_by[i]
        models = {"loss_base": load_model(cfg.model.name), "loss_ref": load_model(f"{disc_dir}/control-{fold}")}
        if getattr(cfg.score, "disc_context", "own") == "own":
            # (scored in a foreign context, loss_disc is by design not the loss of the row as it is)
            models["loss_disc"] = load_model(f"{disc_dir}/disc-{fold}")
        ids, attn, mask = pad_batch([r["input_ids"]], [r["loss_mask"]], smol_tokenizer.pad_token_id)
        for column, model in models.items():
            with torch.no_grad():
                ref = reference_token_losses(model, ids, attn, mask)[0].numpy()
            np.testing.assert_allclose(np.asarray(r[column]), ref, atol=1e-4, rtol=1e-4, err_msg=column)


def test_shards_read_with_polars_and_datasets(synthetic_run, tmp_path):
    _, _, records, _ = synthetic_run
    uri = records["weights"].uri
    df = pl.read_parquet(f"{uri}/part-*.parquet")
    assert df.columns == [name for name, _ in DESIGN_COLUMNS]
    assert df.height == 24
    assert df.schema["weight"] == pl.List(pl.Float32) and df.schema["offsets"] == pl.List(pl.List(pl.Int32))
    sums = df.select(pl.col("weight").list.sum()).to_series().to_list()
    assert all(abs(s - 1) < 1e-5 for s in sums)
    import datasets

    ds = datasets.load_dataset("parquet", data_files=shards(uri), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 24 and ds.column_names == df.columns


def test_summary_is_consistent_with_the_shards(synthetic_run):
    cfg, _, records, _ = synthetic_run
    uri = records["weights"].uri
    summary = json.load(open(f"{uri}/summary.json"))
    assert {"method", "reference", "margin", "samples", "target_tokens", "boilerplate_share",
            "mean_ld", "top_tokens", "roles"} <= set(summary)
    assert summary["method"] == "rft" and summary["reference"] == "control" and summary["margin"] == 0.0
    table = pa.concat_tables([pq.read_table(p) for p in shards(uri)]).to_pylist()
    cls = np.concatenate([np.asarray(r["token_class"]) for r in table])
    ld = np.concatenate([np.asarray(r["loss_disc"], np.float64) - np.asarray(r["loss_ref"], np.float64) for r in table])
    assert summary["target_tokens"] == {"boilerplate": int((cls == 0).sum()), "reasoning": int((cls == 1).sum())}
    n = {s: sum(r["split"] == s for r in table) for s in ("train", "eval")}
    assert {k: v for k, v in n.items() if v} == summary["samples"]
    assert summary["boilerplate_share"] == pytest.approx((cls == 0).sum() / (cls >= 0).sum(), abs=1e-4)
    for c, name in ((0, "boilerplate"), (1, "reasoning")):
        if (cls == c).any():
            assert summary["mean_ld"][name] == pytest.approx(ld[cls == c].mean(), abs=1e-3)
        counts = [t["count"] for t in summary["top_tokens"][name]]
        assert counts == sorted(counts, reverse=True) and len(counts) <= cfg.weights.top_tokens
    roles = summary["roles"]
    assert roles["tokens"] == (cls >= 0).sum()
    assert 0 <= roles["accuracy"] <= 1
    manifest = json.load(open(f"{uri}/_manifest.json"))
    assert manifest["counts"]["samples"] == len(table)


def test_report_html_is_written_beside_the_shards(synthetic_run):
    _, _, records, _ = synthetic_run
    uri = records["weights"].uri
    manifest = json.loads(Path(uri, "_manifest.json").read_text())
    assert "report.html" in manifest["files"]
    page = Path(uri, "report.html").read_text(encoding="utf-8")
    rows = pa.concat_tables([pq.read_table(p, columns=["id"]) for p in shards(uri)]).num_rows
    assert page.count("<div class='sample'") == min(rows, 200) == manifest["counts"]["report_samples"]


def test_second_run_is_fully_cached_and_changes_nothing(synthetic_run):
    cfg, store, first, digest = synthetic_run
    again = run(cfg)
    assert {s: r.cached for s, r in again.items()} == {s: True for s in STAGES}
    assert {s: r.key for s, r in again.items()} == {s: r.key for s, r in first.items()}
    assert tree_digest(store) == digest


def test_truncated_or_corrupt_prefect_records_are_cache_misses(synthetic_run):
    """Prefect writes its result records in place; a run killed mid-write leaves them cut short."""
    from tokenweight.flows.pipeline import pipeline

    cfg, store, _, digest = synthetic_run
    pipeline(cfg)  # Prefect's records go to {store}/_prefect
    files = sorted(p for p in (Path(store) / "_prefect").rglob("*") if p.is_file())
    assert len(files) >= len(STAGES)
    for i, path in enumerate(files):
        body = path.read_bytes()
        path.write_bytes(body[: len(body) // 2] if i % 2 else b"\x00garbage")
    again = pipeline(cfg)
    assert {s: r.cached for s, r in again.items()} == {s: True for s in STAGES}
    assert tree_digest(store) == digest


class _PlantedPayload:
    """Unpickling this creates a file: the proof that a record was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_prefect_records_in_a_real_store_are_plain_json_and_a_planted_pickle_never_runs(synthetic_run, tmp_path):
    """The records a real run leaves in {store}/_prefect are JSON with the plain-JSON serializer; a
    pickled record planted under a stage's cache key (as anyone who can write to a shared store
    could) is refused and never unpickled: the run reads the stage from its manifest instead."""
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    from tokenweight.flows.pipeline import pipeline
    from tokenweight.prefect_records import check_record

    cfg, store, first, digest = synthetic_run
    pipeline(cfg)
    records = sorted(p for p in (Path(store) / "_prefect").rglob("*") if p.is_file())
    assert {p.name for p in records} == {r.key for r in first.values()}
    for path in records:
        body = path.read_bytes()
        assert not body.startswith(b"\x80"), f"{path} is a pickle"
        envelope = json.loads(body)
        assert envelope["metadata"]["serializer"]["type"] == "json", path
        assert check_record(body, str(path)) == body
        assert json.loads(envelope["result"])["key"] == path.name

    marker = tmp_path / "unpickled"
    key = first["prepare"].key
    planted = ResultRecord(metadata=ResultRecordMetadata(serializer=PickleSerializer(), storage_key=key),
                           result=_PlantedPayload(marker))
    (Path(store) / "_prefect" / key).write_bytes(planted.serialize())
    again = pipeline(cfg)
    assert not marker.exists(), "a pickled Prefect record was unpickled"
    assert {s: r.cached for s, r in again.items()} == {s: True for s in STAGES}
    assert tree_digest(store) == digest
    assert json.loads((Path(store) / "_prefect" / key).read_bytes())["metadata"]["serializer"]["type"] == "json"


def test_changed_learning_rate_reruns_from_the_discriminator(synthetic_run, tiny_model_dir):
    cfg, store, first, _ = synthetic_run
    changed = pipeline_config(tiny_model_dir, store, discriminator={"learning_rate": 3e-3})
    records = run(changed)
    assert {s: r.cached for s, r in records.items()} == {
        "prepare": True, "shuffle": True, "discriminator": False, "score": False, "weights": False,
        "finetune": False, "eval": False}
    for stage in ("prepare", "shuffle"):
        assert records[stage].key == first[stage].key
    for stage in ("discriminator", "score", "weights", "finetune", "eval"):
        assert records[stage].key != first[stage].key
        assert os.path.isfile(f"{first[stage].uri}/_manifest.json")  # the old output stays
    check_weighted_dataset(records, "rft", "control")


def test_output_deleted_by_hand_is_recomputed(synthetic_run):
    """Prefect remembers the weights stage, but its files are gone: the flow computes it again."""
    import shutil

    cfg, store, first, digest = synthetic_run
    shutil.rmtree(first["weights"].uri)
    records = run(cfg)
    assert records["weights"].cached is False and records["score"].cached is True
    assert records["weights"].key == first["weights"].key
    assert records["finetune"].cached is True  # same key: its output is still there
    check_weighted_dataset(records, "rft", "control")


def test_jsonl_run_uniform_weights_with_base_reference(jsonl_run):
    cfg, records = jsonl_run
    assert all(not r.cached for r in records.values())
    table = check_weighted_dataset(records, "uniform", "base")
    prep = json.load(open(f"{records['prepare'].uri}/_manifest.json"))["counts"]
    assert table.num_rows == prep["accepted"] == 18 and prep["rejected"] == 0
    for r in table.to_pylist():
        mask = np.asarray(r["loss_mask"])
        assert np.allclose(np.asarray(r["weight"])[mask == 1], 1 / mask.sum())
    disc = json.load(open(f"{records['discriminator'].uri}/_manifest.json"))
    assert set(disc["trained"]) == {"disc-0", "disc-1"}
    score = pq.read_table(glob.glob(f"{records['score'].uri}/part-*.parquet")[0])
    assert score.column("loss_control").null_count == score.num_rows


def test_roles_table_agrees_with_the_summary(synthetic_run, jsonl_run, capsys):
    from tokenweight.cli import main

    cfg, _, records, _ = synthetic_run
    weights_dir = records["weights"].uri
    assert main(["roles", weights_dir, "--margins", str(cfg.weights.margin), "5.0",
                 "--gaps", "0.0", str(cfg.weights.min_gap)]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    table = {tuple(c.strip() for c in r[:1] + r[2:5]): [float(x) for x in r[5:]] for r in rows}
    assert {ref for ref, *_ in table} == {"control", "base"}
    assert {gran for _, gran, *_ in table} == {"value", "word", "token"}
    roles = json.loads((Path(weights_dir) / "summary.json").read_text())["roles"]
    # The weights stage ran with the control, its granularity, margin and min gap: the same figures.
    assert table[("control", cfg.weights.granularity, str(cfg.weights.margin), str(cfg.weights.min_gap))] == \
        pytest.approx([roles["accuracy"], roles["reasoning_precision"], roles["reasoning_recall"],
                       roles["reasoning_f1"]], abs=1e-3)
    # A margin no LD reaches leaves no reasoning token.
    assert table[("control", "token", "5.0", "0.0")][2] == 0.0
    # The calibrated margin is shown with the value it took.
    assert any(m.startswith("auto (") for _, _, m, _ in table)
    # A source without known roles is a clear error, not an empty table.
    assert main(["roles", jsonl_run[1]["weights"].uri]) == 2
    assert "no sample with known token roles" in capsys.readouterr().err


def test_roles_errors_lists_the_runs_own_misses_and_the_repeats(synthetic_run, capsys):
    import re

    from tokenweight.cli import main

    _, _, records, _ = synthetic_run
    weights_dir = records["weights"].uri
    assert main(["roles", weights_dir, "--errors", "3"]) == 0
    out = capsys.readouterr().out
    roles = json.loads((Path(weights_dir) / "summary.json").read_text())["roles"]
    # The error table reads the run's own classes: its F1 is the weights stage's.
    assert float(re.search(r"Reasoning F1 ([0-9.]+);", out).group(1)) == pytest.approx(roles["reasoning_f1"], abs=1e-3)
    repeats = re.search(r"already wrote: (\d+) boilerplate by the roles \((\d+) classed reasoning\), (\d+) reasoning "
                        r"\((\d+) classed reasoning\); with every repeat classed boilerplate, F1 ([0-9.]+)", out)
    assert repeats, out
    b, b_r, r, r_r = map(int, repeats.groups()[:4])
    assert b_r <= b and r_r <= r and b + r <= roles["tokens"]


def test_ld_ensemble_of_a_run_with_itself_is_the_run(synthetic_run, jsonl_run):
    from benchmarks.ld_ensemble import ensemble_roles
    from tokenweight.role_report import run_roles

    cfg, _, records, _ = synthetic_run
    weights_dir = Path(records["weights"].uri)
    margins, gaps = [cfg.weights.margin, 1.5], [0.0, cfg.weights.min_gap]
    singles, ensemble = ensemble_roles([weights_dir, weights_dir], margins, gaps)
    alone = run_roles(weights_dir, margins, gaps)
    assert ensemble.confusion == alone.confusion == singles[0].confusion
    assert sum(ensemble.confusion[("control", "value", cfg.weights.margin, cfg.weights.min_gap)].values()) > 0
    assert ensemble.auto_margin == pytest.approx(alone.auto_margin, abs=1e-4)
    # runs of other data are refused before anything is averaged
    with pytest.raises(ValueError, match="different prepared data"):
        ensemble_roles([weights_dir, Path(jsonl_run[1]["weights"].uri)], margins, gaps)


def _artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                     sort=ArtifactSort.CREATED_DESC)


def test_each_stage_published_a_prefect_artifact_with_its_counts(synthetic_run):
    _, store, records, _ = synthetic_run
    for stage in STAGES:
        # (the two-stores test publishes the same keys from another store: pick this store's artifact)
        text = next(a.data for a in _artifacts(f"tokenweight-{stage}-output")
                    if records[stage].key in a.data and records[stage].uri in a.data)
        assert f"### {stage} `{records[stage].key}`" in text
        manifest = json.loads(Path(records[stage].uri, "_manifest.json").read_text())
        for name, value in manifest.get("counts", {}).items():
            if not isinstance(value, dict):
                assert f"| {name} | {value} |" in text, (stage, name)
    text = next(a.data for a in _artifacts("tokenweight-weights-output") if records["weights"].uri in a.data)
    summary = json.loads(Path(records["weights"].uri, "summary.json").read_text())
    assert f"boilerplate share **{summary['boilerplate_share']:.1%}**" in text and "most frequent reasoning" in text
    assert f"token report: `{records['weights'].uri}/report.html`" in text


def test_margin_auto_is_the_calibrated_margin_of_the_runs_own_ld(synthetic_run):
    from tokenweight.flows.pipeline import pipeline
    from tokenweight.components.token_weights import calibrated_margin

    cfg, _, records, _ = synthetic_run
    auto = cfg.model_copy(update={"weights": cfg.weights.model_copy(update={"margin": "auto"})})
    got = pipeline(auto, until="weights")
    assert got["score"].key == records["score"].key  # only the weights stage ran again
    rows = pa.concat_tables([pq.read_table(p) for p in shards(got["weights"].uri)]).to_pylist()
    lds = [(np.asarray(r["loss_disc"]) - np.asarray(r["loss_ref"]))[np.asarray(r["loss_mask"]) == 1]
           for r in rows if r["split"] == "train"]
    expected = calibrated_margin(np.concatenate(lds))
    summary = json.loads((Path(got["weights"].uri) / "summary.json").read_text())
    assert summary["margin_setting"] == "auto" and summary["margin"] == pytest.approx(expected, abs=1e-4)
    assert expected > 0  # the tiny model's LD has a negative side to mirror
    for r in rows:
        mask = np.asarray(r["loss_mask"])
        groups = value_groups(r["text"], r["offsets"], mask)
        ld = group_max(np.asarray(r["loss_disc"]) - np.asarray(r["loss_ref"]), groups)
        assert np.array_equal(np.asarray(r["token_class"])[mask == 1] == 1, ld[mask == 1] > summary["margin"])
