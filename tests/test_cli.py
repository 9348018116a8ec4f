"""tokenweight.cli.main: one clear line for errors the user can fix, and a real small run."""

import json
import re

import pyarrow.parquet as pq
import pytest
import yaml

from tokenweight.cli import main
from tokenweight.config import STAGES


def write_config(path, model_dir, store, **extra):
    data = {
        "store": str(store),
        "model": {"name": str(model_dir)},
        "prepare": {"source": {"kind": "synthetic", "n": 16, "seed": 2}, "max_tokens": 512},
        "shuffle": {"floor": 8},
        "discriminator": {"epochs": 1, "batch_tokens": 512, "train_layers": 2},
        "score": {"batch_tokens": 1024, "chunk_rows": 64},
        "weights": {"margin": 0.1},
        "finetune": {"max_steps": 2, "batch_size": 4, "grad_accum": 1},
        "eval": {"max_new_tokens": 4},
    }
    data.update(extra)
    path.write_text(yaml.safe_dump(data))
    return str(path)


def error_lines(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tokenweight: error:")]
    return err, lines


def test_unknown_config_key_exits_2_with_one_line(tmp_path, capsys, tiny_model_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "store")
    text = open(cfg).read().replace("epochs: 1", "learnin_rate: 0.1\n  epochs: 1")
    open(cfg, "w").write(text)
    assert main(["run", cfg]) == 2
    err, lines = error_lines(capsys)
    assert len(lines) == 1 and "discriminator.learnin_rate: unknown key" in lines[0] and cfg in lines[0]
    assert "Traceback" not in err


def test_unknown_override_key_exits_2(tmp_path, capsys, tiny_model_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "store")
    assert main(["run", cfg, "--set", "weights.marginn=0.3"]) == 2
    err, lines = error_lines(capsys)
    assert len(lines) == 1 and "weights.marginn: unknown key" in lines[0]
    assert "Traceback" not in err


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none.yaml")]) == 2
    err, lines = error_lines(capsys)
    assert len(lines) == 1 and "none.yaml: config file not found" in lines[0]


def test_missing_data_file_exits_2(tmp_path, capsys, tiny_model_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "store")
    missing = tmp_path / "nope.jsonl"
    assert main(["run", cfg, "--data", str(missing)]) == 2
    err, lines = error_lines(capsys)
    assert len(lines) == 1 and f"--data {missing}: file not found" in lines[0]
    assert "Traceback" not in err


def test_a_store_that_cannot_be_written_exits_2_naming_it(tmp_path, capsys, tiny_model_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, blocker / "store")
    assert main(["run", cfg]) == 2
    err, lines = error_lines(capsys)
    assert len(lines) == 1 and f"store {blocker / 'store'} is not writable" in lines[0], err
    assert "Traceback" not in err


def test_a_store_url_with_a_password_exits_2_without_printing_it(tmp_path, capsys, tiny_model_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, "s3://KEYID:very-secret-value@bucket/tw")
    assert main(["run", cfg]) == 2
    err, lines = error_lines(capsys)
    assert len(lines) == 1 and "holds credentials" in lines[0] and "very-secret-value" not in err


def test_an_empty_data_file_exits_2_with_one_line(tmp_path, tiny_model_dir, prefect_harness, prefect_capfd):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "store")
    assert main(["run", cfg, "--data", str(empty)]) == 2
    err, lines = error_lines(prefect_capfd)
    assert len(lines) == 1 and str(empty) in lines[0] and "has no rows" in lines[0], err
    assert "one JSON object per line" in lines[0]  # what to put there
    assert "Traceback" not in err
    assert "Failed to write result" not in err  # the failed stage's record is JSON too


def test_missing_model_path_exits_2_naming_it(tmp_path, prefect_harness, prefect_capfd):
    missing = tmp_path / "no-such-model"
    cfg = write_config(tmp_path / "c.yaml", missing, tmp_path / "store")
    assert main(["run", cfg]) == 2
    err, lines = error_lines(prefect_capfd)
    assert len(lines) == 1 and str(missing) in lines[0] and "ModelError" in lines[0], err


def test_missing_model_path_prints_no_traceback(tmp_path, prefect_harness, prefect_capfd):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "no-such-model", tmp_path / "store")
    assert main(["run", cfg]) == 2
    err, _ = error_lines(prefect_capfd)
    assert "Traceback" not in err


def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(Exception, match="config file not found"):
        main(["run", str(tmp_path / "none.yaml"), "--debug"])


SECRETS = {"PREFECT_API_AUTH_STRING": "tw-user-sentinel:pf-auth-sentinel-71", "AWS_SECRET_ACCESS_KEY": "aws-sentinel-93",
           "AWS_ACCESS_KEY_ID": "AKIASENTINEL42"}


def test_real_run_then_everything_cached(tmp_path, tiny_model_dir, prefect_harness, prefect_capfd, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    store = tmp_path / "store"
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, store)
    code = main(["run", cfg])
    captured = prefect_capfd.readouterr()
    assert code == 0, captured.err[-1200:]
    out = captured.out
    _assert_no_secret(captured.out + captured.err, store)
    assert re.search(r"tokenweight: 7 stages in [0-9.]+s \(7 ran, 0 cached\)", out), out
    for stage in STAGES:
        line = next((l for l in out.splitlines() if l.strip().startswith(stage + " ")), None)
        assert line is not None, f"{stage} missing from report:\n{out}"
        assert " ran " in line and f"{store}/{stage}/" in line
        # where the run's time went: each stage that ran with its manifest's seconds
        took = (store / stage).glob("*/_manifest.json")
        seconds = json.loads(next(took).read_text())["seconds"]
        assert re.search(rf" ran +{seconds:.1f}s  ", line), line
    assert "samples:" in out and "weight shards:" in out and "against known roles" in out
    assert "eval [rft]: accuracy n/a on 0 checked samples; held-out loss boilerplate" in out
    # The tiny model's classes are all boilerplate here; a class with no token is left out.
    assert re.search(r"held-out loss per token class, base model -> tuned: boilerplate [0-9.]+ -> [0-9.]+\n", out), out
    assert "every stage came from the cache" not in out

    assert main(["run", cfg]) == 0
    out = prefect_capfd.readouterr().out
    for stage in STAGES:
        line = next(l for l in out.splitlines() if l.strip().startswith(stage + " "))
        assert " cached " in line and not re.search(r"[0-9]s  ", line), line
    assert "nothing to do: every stage came from the cache" in out and "(0 ran, 7 cached)" in out


def _assert_no_secret(output: str, store) -> None:
    """No credential in the terminal, any file of the store (Prefect's records included) or Prefect's
    artifacts."""
    from prefect.client.orchestration import get_client

    texts = {"terminal": output}
    texts.update({str(p): p.read_bytes().decode("utf-8", "replace") for p in store.rglob("*") if p.is_file()})
    with get_client(sync_client=True) as client:
        texts["artifacts"] = " ".join(str(a.data) + str(a.description) for a in client.read_artifacts())
    for where, text in texts.items():
        for name, value in SECRETS.items():
            for part in value.split(":"):
                assert part not in text, f"{name} appears in {where}"


def test_until_and_data_options(tmp_path, tiny_model_dir, prefect_harness, prefect_capfd):
    from helpers import chat_rows, write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(10))
    # (8 train rows of two turn structures are too few to derange within each of two folds)
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "store", shuffle={"floor": 8, "folds": 1})
    other_store = tmp_path / "elsewhere"
    assert main(["run", cfg, "--data", data, "--until", "shuffle", "--store", str(other_store)]) == 0
    out = prefect_capfd.readouterr().out
    assert "tokenweight: 2 stages" in out
    assert f"{other_store}/prepare/" in out and f"{other_store}/shuffle/" in out
    assert "discriminator" not in out
    assert not (tmp_path / "store").exists()


def test_compare_prints_the_table(tmp_path, tiny_model_dir, prefect_harness, prefect_capfd):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "store",
                       compare={"arms": [{"name": "sft", "finetune": {"method": "sft"}},
                                         {"name": "weighted", "finetune": {"method": "weighted"}}],
                                "bootstrap": 100})
    code = main(["compare", cfg])
    captured = prefect_capfd.readouterr()
    assert code == 0, captured.err[-1200:]
    out = captured.out
    assert re.search(r"tokenweight compare: 10 stages \(10 ran, 0 cached\)", out), out
    rows = [l for l in out.splitlines() if l.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["base", "sft", "weighted"]
    assert f"{tmp_path / 'store'}/compare/" in out

    # --export on the cached run: the table and every row's predictions and metrics, as files to commit.
    exported = tmp_path / "results"
    assert main(["compare", cfg, "--export", str(exported)]) == 0
    assert "(0 ran, 10 cached)" in prefect_capfd.readouterr().out
    table = json.loads((exported / "table.json").read_text())
    assert [r["arm"] for r in table["rows"]] == ["base", "sft", "weighted"]
    assert (exported / "table.md").read_text().startswith("| arm |")
    for arm in ("base", "sft", "weighted"):
        predictions = pq.read_table(exported / "predictions" / f"{arm}.parquet")
        metrics = json.loads((exported / "metrics" / f"{arm}.json").read_text())
        assert predictions.num_rows == metrics["samples"] > 0 and metrics["model"]["name"] == arm


def test_compare_with_a_bad_arm_override_exits_2_naming_it(tmp_path, capsys, tiny_model_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "store",
                       compare={"arms": [{"name": "sft", "finetune": {"method": "sft"}},
                                         {"name": "odd", "finetune": {"metod": "rft"}}]})
    assert main(["compare", cfg]) == 2
    err, lines = error_lines(capsys)
    assert len(lines) == 1 and "compare.arms[odd].finetune: metod: Extra inputs are not permitted" in lines[0], err
