"""The prepare stage on bad input: rejects with file/line/id/reason, counts, and the reject limit."""

import json
import os

import pyarrow.parquet as pq
import pytest

from helpers import pipeline_config, write_jsonl
from tokenweight.models import resolve_base_model
from tokenweight.store import Store
from tokenweight.schemas import PREPARED
from tokenweight.sources.registry import PrepareError
from tokenweight.stage_protocol import run_stage
from tokenweight.tasks.prepare import PREPARE, split_of

LONG = "word " * 400


def good(i):
    return {"id": f"g{i}", "messages": [{"role": "user", "content": f"Question {i}?"},
                                        {"role": "assistant", "content": f"Answer {i}."}]}


def bad_rows():
    """12 good rows and one of each kind of bad row, with the line each sits on."""
    rows = [good(i) for i in range(12)]
    rows.insert(2, '{"id": "broken", "messages": [')                                       # line 3
    rows.insert(5, {"id": "noanswer", "messages": [{"role": "user", "content": "Hi?"}]})   # line 6
    rows.insert(7, {"id": "oddrole", "messages": [{"role": "narrator", "content": "x"},
                                                  {"role": "assistant", "content": "y"}]})  # line 8
    rows.insert(9, dict(good(1)))                                                           # line 10: dup of g1
    rows.insert(11, {"id": "long", "messages": [{"role": "user", "content": LONG},
                                                {"role": "assistant", "content": "ok"}]})   # line 12
    return rows


EXPECTED = {  # line -> (id, start of reason)
    3: (None, "invalid JSON"),
    6: ("noanswer", "no assistant turn"),
    8: ("oddrole", "message 0 has unknown role 'narrator'"),
    10: ("g1", "duplicate id"),
    12: ("long", "over-long"),
}


def config(model_dir, tmp_path, path, **prepare):
    return pipeline_config(model_dir, tmp_path / "store", {"kind": "file", "path": path},
                           prepare={"max_tokens": 128, "truncation": "reject", **prepare})


def test_rejects_are_listed_with_file_line_id_and_reason(tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", bad_rows())
    cfg = config(tiny_model_dir, tmp_path, path)
    base = resolve_base_model(cfg.model, Store(cfg.store))
    record = run_stage(PREPARE, cfg, Store(cfg.store), base=base)
    assert record.cached is False and record.key == PREPARE.key(cfg, base=base)
    out = record.uri
    rejects = [json.loads(line) for line in open(os.path.join(out, "rejects.jsonl"))]
    assert [r["line"] for r in rejects] == sorted(EXPECTED)
    for r in rejects:
        assert set(r) == {"file", "line", "id", "reason"}
        assert r["file"] == path
        rid, reason = EXPECTED[r["line"]]
        assert r["id"] == rid and r["reason"].startswith(reason), r
    manifest = json.load(open(os.path.join(out, "_manifest.json")))
    counts = manifest["counts"]
    assert counts["rows_read"] == 17
    assert counts["accepted"] == 12 and counts["rejected"] == 5
    assert counts["accepted"] + counts["rejected"] == counts["rows_read"]
    assert counts["train"] + counts["eval"] == counts["accepted"]
    # The shards hold exactly the accepted rows, in the prepare schema.
    tables = [pq.read_table(os.path.join(out, f)) for f in sorted(os.listdir(out)) if f.startswith("part-")]
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    assert ids == [f"g{i}" for i in range(12)]
    assert all(t.schema.remove_metadata().equals(PREPARED) for t in tables)
    assert counts["tokens"] == sum(len(x) for t in tables for x in t.column("input_ids").to_pylist())
    assert counts["target_tokens"] == sum(sum(x) for t in tables for x in t.column("loss_mask").to_pylist())
    # A second run finds the output.
    assert run_stage(PREPARE, cfg, Store(cfg.store), base=base).cached is True


def test_too_many_rejects_stops_with_the_first_reject_and_writes_nothing(tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", bad_rows())
    cfg = config(tiny_model_dir, tmp_path, path, max_reject_share=0.2)  # 5/17 = 0.29 > 0.2
    base = resolve_base_model(cfg.model, Store(cfg.store))
    with pytest.raises(PrepareError) as err:
        run_stage(PREPARE, cfg, Store(cfg.store), base=base)
    msg = str(err.value)
    assert "5 of 17 rows rejected" in msg
    assert f"first: {path}:3: invalid JSON" in msg
    store = Store(cfg.store)
    key = PREPARE.key(cfg, base=base)
    assert store.manifest("prepare", key) is None
    assert not os.path.exists(store.stage_uri("prepare", key))
    assert not store.work_dir("prepare", key).exists()  # no staged files left behind


def test_right_truncation_keeps_the_sample_and_counts_it(tiny_model_dir, tmp_path):
    rows = [good(i) for i in range(4)]
    rows.append({"id": "long", "messages": [{"role": "user", "content": "Summarise."},
                                            {"role": "assistant", "content": LONG}]})
    rows.append({"id": "lost", "messages": [{"role": "user", "content": LONG},
                                            {"role": "assistant", "content": "ok"}]})
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    cfg = config(tiny_model_dir, tmp_path, path, truncation="right")
    base = resolve_base_model(cfg.model, Store(cfg.store))
    record = run_stage(PREPARE, cfg, Store(cfg.store), base=base)
    counts = json.load(open(os.path.join(record.uri, "_manifest.json")))["counts"]
    assert counts["accepted"] == 5 and counts["rejected"] == 1
    assert counts["truncated_samples"] == 1 and counts["truncated_tokens"] > 0
    rejects = [json.loads(line) for line in open(os.path.join(record.uri, "rejects.jsonl"))]
    assert [(r["id"], r["line"]) for r in rejects] == [("lost", 6)]
    assert "no assistant token" in rejects[0]["reason"]
    table = pq.read_table(os.path.join(record.uri, "part-00000.parquet"))
    long_row = table.to_pylist()[table.column("id").to_pylist().index("long")]
    assert len(long_row["input_ids"]) == 128 == len(long_row["offsets"]) == len(long_row["loss_mask"])


def test_synthetic_source_records_role_truth(tiny_model_dir, tmp_path):
    cfg = pipeline_config(tiny_model_dir, tmp_path, {"kind": "synthetic", "n": 6, "seed": 1})
    base = resolve_base_model(cfg.model, Store(cfg.store))
    record = run_stage(PREPARE, cfg, Store(cfg.store), base=base)
    table = pq.read_table(os.path.join(record.uri, "part-00000.parquet"))
    for row in table.to_pylist():
        truth, mask = row["role_truth"], row["loss_mask"]
        assert len(truth) == len(mask)
        assert all((t == -1) == (m == 0) for t, m in zip(truth, mask))
        assert 1 in truth and 0 in truth
    assert json.load(open(os.path.join(record.uri, "_manifest.json")))["counts"]["roles_known"] == 6


def test_split_is_stable_and_roughly_the_share():
    ids = [f"s{i}" for i in range(2000)]
    splits = [split_of(i, 0, 0.2) for i in ids]
    assert splits == [split_of(i, 0, 0.2) for i in ids]
    assert 0.16 < splits.count("eval") / len(ids) < 0.24
    assert split_of("a", 0, 0.0) == "train"
    assert [split_of(i, 1, 0.2) for i in ids] != splits  # the seed matters


def test_an_eval_source_is_the_whole_eval_split_and_part_of_the_key(tiny_model_dir, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [good(i) for i in range(6)])
    held_out = write_jsonl(tmp_path / "eval.jsonl", [{**good(i), "id": f"e{i}"} for i in range(3)])
    cfg = pipeline_config(tiny_model_dir, tmp_path / "store", {"kind": "file", "path": train},
                          prepare={"eval_source": {"kind": "file", "path": held_out}, "eval_share": 0.5})
    base = resolve_base_model(cfg.model, Store(cfg.store))
    record = run_stage(PREPARE, cfg, Store(cfg.store), base=base)
    rows = pq.read_table(os.path.join(record.uri, "part-00000.parquet"), columns=["id", "split"]).to_pylist()
    assert {r["id"]: r["split"] for r in rows} == {**{f"g{i}": "train" for i in range(6)},
                                                   **{f"e{i}": "eval" for i in range(3)}}
    counts = json.load(open(os.path.join(record.uri, "_manifest.json")))["counts"]
    assert (counts["train"], counts["eval"]) == (6, 3)
    key = PREPARE.key(cfg, base=base)
    with open(held_out, "a") as f:
        f.write(json.dumps({**good(9), "id": "e9"}) + "\n")
    assert PREPARE.key(cfg, base=base) != key  # an edited eval file re-runs prepare


def test_gsm8k_and_reasoning_gym_sources_prepare(tiny_model_dir, tmp_path):
    cfg = pipeline_config(tiny_model_dir, tmp_path / "store", {"kind": "reasoning_gym", "n": 5, "seed": 3},
                          prepare={"eval_source": {"kind": "gsm8k", "limit": 4}})
    base = resolve_base_model(cfg.model, Store(cfg.store))
    record = run_stage(PREPARE, cfg, Store(cfg.store), base=base)
    rows = pq.read_table(os.path.join(record.uri, "part-00000.parquet")).to_pylist()
    assert [r["split"] for r in rows] == ["train"] * 5 + ["eval"] * 4
    for row in rows:
        answer = json.loads(row["meta"])["answer"]
        assert row["text"].rstrip().endswith(f"The answer is {answer}.<|im_end|>")
