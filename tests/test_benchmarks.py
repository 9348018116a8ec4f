"""benchmarks/: the harness measures what it claims, and the naive baseline computes what ours does
(the benchmarks themselves run on demand, not here)."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig

from benchmarks import inputs
from benchmarks.harness import Measured, PeakMemory, isolated, print_table
from benchmarks.scoring import must_do_flops, naive_scores
from tokenweight.components.score_tokens import score_rows


def test_peak_memory_sees_an_allocation_made_and_freed_inside_the_block():
    with PeakMemory() as mem:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert 56 * 2**20 <= mem.peak <= 200 * 2**20
    with PeakMemory() as idle:
        pass
    assert idle.peak < 16 * 2**20


def _measure_in_child(n: int) -> Measured:
    return Measured([float(n)], 0, {"pid": __import__("os").getpid()})


def test_isolated_runs_in_another_process_and_returns_its_result():
    got = isolated(_measure_in_child, n=3)
    assert got.seconds == [3.0] and got.extra["pid"] != __import__("os").getpid()


def test_naive_scorer_equals_score_rows(tiny_model, smol_tokenizer):
    """The baseline is a correct scorer: same per-token losses as ours, row by row."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 1000, (n,), generator=g).tolist() for n in (5, 17, 1, 9, 12)]
    masks = [[0] * (len(r) // 2) + [1] * (len(r) - len(r) // 2) for r in rows]
    other = inputs.tuned_copy(tiny_model, top_layers=1, seed=1)
    models = {"base": tiny_model.eval(), "tuned": other.eval()}
    ours = score_rows(models, rows, masks, smol_tokenizer.pad_token_id, batch_tokens=40, shared_top_layers=1)
    naive = naive_scores(models, rows, masks, smol_tokenizer.pad_token_id, batch_rows=2)
    for name in models:
        for a, b in zip(ours[name], naive[name]):
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(np.concatenate(ours["base"]), np.concatenate(ours["tuned"]))


def test_must_do_flops_by_hand():
    config = LlamaConfig(vocab_size=10, hidden_size=4, intermediate_size=8, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1)
    rows, masks = [[1, 2, 3]], [[0, 1, 1]]
    # per token per block: 2*(q 4*4 + k,v 2*4*2 + o 4*4 + mlp 3*4*8) = 2*(16+16+16+96) = 288
    # attention per block: 2 * q(4) * T(3) * (T+1)(4) = 96; a block on the row: 288*3 + 96 = 960
    # 2 models sharing 1 bottom block: 1 + 2*2 = 5 blocks; head: 2 models * 2*4*10 * 2 targets = 320
    assert must_do_flops(config, rows, masks, n_models=2, shared_bottom_layers=1) == 5 * 960 + 320


def test_print_table_aligns_columns(capsys):
    print_table("t", ["a", "bb"], [["xxx", 1]])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1] == "| a   | bb |" and lines[3] == "| xxx | 1  |"


def test_role_suite_makes_one_data_set_per_format():
    from benchmarks.role_suite import CONFIG, FORMATS, format_overrides
    from tokenweight.config import BfclRolesSource, RolesSource
    from tokenweight.flows.deployed import load_run_config

    for fmt in FORMATS:
        cfg = load_run_config(str(CONFIG), format_overrides(fmt, 120))
        assert cfg.prepare.eval_source is None  # every format is scored as its own data set
        if fmt == "bfcl":
            assert isinstance(cfg.prepare.source, BfclRolesSource) and cfg.prepare.source.limit_per_category == 40
        else:
            assert cfg.prepare.source == RolesSource(format=fmt, n=120, seed=0)
        # the suite measures the defaults: the config classes' own, not a recipe of its own
        for section, name in ((cfg.weights, "granularity"), (cfg.weights, "margin"), (cfg.weights, "min_gap"),
                              (cfg.discriminator, "train_layers")):
            assert getattr(section, name) == type(section).model_fields[name].default, name


def test_bfcl_hermes_reader_compiles_from_bfcl_source_and_parts_from_ours_where_results_say():
    # results/bfcl-agent/README.md: which reader is stricter on which rule.
    from benchmarks.hermes_reader_agreement import EDGE_CASES, bfcl_hermes_reader
    from tokenweight.evals.bfcl_match import CallParseError
    from tokenweight.evals.call_answers import parse_answer

    bfcl, call = bfcl_hermes_reader(), [{"f": {"x": 1}}]
    for alike in ("text around the block", "an unclosed second block"):
        assert bfcl(EDGE_CASES[alike]) == parse_answer(EDGE_CASES[alike], "hermes") == call
    assert bfcl(EDGE_CASES["no newline inside the tags"]) == []
    assert parse_answer(EDGE_CASES["no newline inside the tags"], "hermes") == call
    for stricter in ("an extra key beside name and arguments", "a second block that is not JSON"):
        assert bfcl(EDGE_CASES[stricter]) == call
        with pytest.raises(CallParseError):
            parse_answer(EDGE_CASES[stricter], "hermes")


def test_rft_tau_reads_the_weights_shards_train_split_as_the_preflight_does(tmp_path):
    import math

    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.rft_tau import tau_table

    # one train sample with both classes (boilerplate loss 1, reasoning loss 2), one with reasoning
    # only (w_r 1), and an eval sample that must not count; -1 marks positions outside the target.
    rows = [{"split": "train", "loss_base": [9.0, 1.0, 1.0, 2.0], "loss_disc": [0.0, 0.1, 0.1, 3.0],
             "token_class": [-1, 0, 0, 1]},
            {"split": "train", "loss_base": [5.0, 5.0], "loss_disc": [4.0, 4.0], "token_class": [1, 1]},
            {"split": "eval", "loss_base": [0.0, 9.0], "loss_disc": [0.0, 0.0], "token_class": [0, 1]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part-00000.parquet")
    table = tau_table(tmp_path, [0.5, 3.0])
    for row, tau in zip(table, [0.5, 3.0]):
        w_r = 1 / (1 + math.exp(-(2.0 - 1.0) / tau))
        assert row["samples"] == 2
        assert row["rft_reasoning_weight"] == pytest.approx((w_r + 1.0) / 2, abs=1e-4)
        assert row["sft_reasoning_share"] == pytest.approx(3 / 5, abs=1e-4)
    assert table[0]["rft_reasoning_weight"] > table[1]["rft_reasoning_weight"]  # a lower tau follows the loss gap


def test_weight_share_splits_the_weight_column_by_class_over_train_samples(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.weight_share import weight_share

    # sample 1 puts 0.25 on its one reasoning token, sample 2 weighs only a boilerplate token
    # (one of its two reasoning tokens unweighted); the eval sample must not count; -1 is not target.
    rows = [{"split": "train", "token_class": [-1, 0, 0, 1], "weight": [0.0, 0.5, 0.25, 0.25]},
            {"split": "train", "token_class": [0, 1, 1], "weight": [1.0, 0.0, 0.0]},
            {"split": "eval", "token_class": [1, 1], "weight": [0.5, 0.5]}]
    schema = pa.schema([("split", pa.string()), ("token_class", pa.list_(pa.int8())), ("weight", pa.list_(pa.float32()))],
                       metadata={"tokenweight.method": "rho1"})
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "part-00000.parquet")
    share = weight_share(tmp_path)
    assert share["method"] == "rho1" and share["samples"] == 2
    assert share["reasoning_weight"] == pytest.approx((0.25 + 0.0) / 2, abs=1e-3)
    assert share["sft_reasoning_share"] == pytest.approx(3 / 6, abs=1e-3)
    assert share["boilerplate_kept"] == pytest.approx(1.0) and share["reasoning_kept"] == pytest.approx(1 / 3, abs=1e-3)


def test_ld_ensemble_averages_each_models_losses_and_keeps_the_samples():
    from benchmarks.ld_ensemble import auto_margins, averaged_samples

    def sample(sid, disc, control, split="train"):
        return ({"id": sid, "split": split, "loss_mask": [0, 1, 1]},
                {"id": sid, "loss_base": [0.0, 1.0, 1.0], "loss_disc": disc, "loss_control": control})

    run_a = [sample("a", [0.0, 2.0, 0.0], [0.0, 1.0, 0.5]), sample("b", [0.0, 1.0, 1.0], [0.0, 0.0, 0.0], "eval")]
    run_b = [sample("a", [0.0, 4.0, 1.0], [0.0, 0.0, 0.5]), sample("b", [0.0, 3.0, 1.0], [0.0, 2.0, 0.0], "eval")]
    got = averaged_samples([run_a, run_b])
    assert [p["id"] for p, _ in got] == ["a", "b"]
    assert got[0][1]["loss_disc"] == pytest.approx([0.0, 3.0, 0.5])
    assert got[0][1]["loss_control"] == pytest.approx([0.0, 0.5, 0.5])
    assert got[1][1]["loss_disc"] == pytest.approx([0.0, 2.0, 1.0]) and got[0][1]["loss_base"] == [0.0, 1.0, 1.0]
    # `margin: auto` over the train sample's averaged LD: against the control 2.5 and 0.0 (no negative
    # LD, so 0), against the base 2.0 and -0.5 (the one negative LD, mirrored); the eval sample is out
    assert auto_margins(got) == {"control": 0.0, "base": 0.5}
    # runs over other samples, or in another order, are refused
    with pytest.raises(ValueError, match="same samples"):
        averaged_samples([run_a, run_b[::-1]])
    # a base-reference run has no control: the average has none either
    no_control = [(p, {**s, "loss_control": None}) for p, s in run_a]
    assert averaged_samples([no_control, no_control])[0][1]["loss_control"] is None
