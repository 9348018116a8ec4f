"""Deployments: deploy/prefect.yaml names real flows with matching parameters, and a served
deployment run through a real Prefect API computes the stages once, then finds them all Cached,
with Prefect's cache records in the store itself (where every worker that sees the store finds them).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import pipeline_config

REPO = Path(__file__).resolve().parents[1]
STAGES_UNTIL_WEIGHTS = ("prepare", "shuffle", "discriminator", "score", "weights")
DEPLOYMENT = "tokenweight-run/test"
RUN_TIMEOUT_S = 150  # a tiny-model run takes ~10 s after its process has started (~10 s)


def deployments() -> list[dict]:
    return yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["name"])
def test_prefect_yaml_deployment_names_a_flow_and_its_parameters(deployment):
    from prefect import Flow

    from tokenweight.flows.deployed import load_run_config

    module, name = deployment["entrypoint"].split(":")
    flow = getattr(importlib.import_module(module), name)
    assert isinstance(flow, Flow)
    params = deployment["parameters"]
    inspect.signature(flow.fn).bind(**params)  # unknown or missing parameters raise TypeError
    # The pull step makes the repository the working directory: configs resolve against it.
    load_run_config(str(REPO / params["config"]), params["overrides"])
    assert deployment["work_pool"]["name"] in ("tokenweight-cpu", "tokenweight-gpu")


def test_prefect_yaml_pull_step_sets_the_working_directory():
    pull = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())["pull"]
    assert pull == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $TOKENWEIGHT_REPO }}"}}]


def test_serve_rejects_a_bad_config_in_one_line(tmp_path, capsys, tiny_model_dir):
    from tokenweight.serve import add_serve_parser, serve_command

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": tiny_model_dir}}))
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", str(config), "--set", "weights.marginn=0.3"])
    assert serve_command(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "weights.marginn: unknown key" in err[0], err


def test_served_deployment_runs_then_every_stage_is_cached(tmp_path, tiny_model_dir, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import get_current_settings

    store = tmp_path / "store"
    cfg = pipeline_config(tiny_model_dir, store)
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    runner_home = tmp_path / "prefect-home"
    log = tmp_path / "serve.log"
    env = {**os.environ, "PREFECT_API_URL": get_current_settings().api.url, "PREFECT_HOME": str(runner_home),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    # A relative config path: it resolves against the directory serve runs in.
    code = "from tokenweight.serve import serve; serve('pipeline.yaml', [], name='test', until='weights')"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            wait_for_deployment(client, proc, log)
            first = run_deployment(DEPLOYMENT, timeout=RUN_TIMEOUT_S, poll_interval=1)
            assert first.state_name == "Completed", tail(log)
            assert stage_states(client, first.id) == {**dict.fromkeys(STAGES_UNTIL_WEIGHTS, "Completed"),
                                                      "base_model": "Completed"}
            (weights_dir,) = [p.parent for p in store.glob("weights/*/_manifest.json")]
            assert sorted(weights_dir.glob("part-*.parquet")), "the weights output has no shards"
            before = snapshot(store)

            second = run_deployment(DEPLOYMENT, timeout=RUN_TIMEOUT_S, poll_interval=1)
            assert second.state_name == "Completed", tail(log)
            assert stage_states(client, second.id) == {**dict.fromkeys(STAGES_UNTIL_WEIGHTS, "Cached"),
                                                       "base_model": "Completed"}
        assert snapshot(store) == before
        # The cache records are in the store (named by the stage keys), not in the runner's home.
        keys = [p.parent.name for p in store.glob("*/*/_manifest.json")]
        assert sorted(p.parent.parent.name for p in store.glob("*/*/_manifest.json")) == sorted(STAGES_UNTIL_WEIGHTS)
        missing = [key for key in keys if not (store / "_prefect" / key).is_file()]
        assert not missing, f"no cache record in {store / '_prefect'} for {missing}"
        assert not any((runner_home / "storage" / key).exists() for key in keys)
    finally:
        stop(proc)


def wait_for_deployment(client, proc: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    """Until serve has registered the deployment (or died, or the time is up)."""
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve exited with {proc.returncode}:\n{tail(log)}"
        try:
            client.read_deployment_by_name(DEPLOYMENT)
            return
        except ObjectNotFound:
            time.sleep(0.5)
    raise AssertionError(f"serve did not register {DEPLOYMENT} in {timeout_s}s:\n{tail(log)}")


def stage_states(client, flow_run_id, timeout_s: float = 30) -> dict[str, str]:
    """Task name -> state name in the pipeline subflow of a deployment run. Prefect 3 records task
    run states from events, a moment after the flow run ends: wait until every one is final."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    (inner,) = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
    deadline = time.monotonic() + timeout_s
    while True:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[inner.id])))
        states = {run.name.rsplit("-", 1)[0]: run.state_name for run in runs}
        final = all(run.state and run.state.is_final() for run in runs)
        if final and len(states) == len(STAGES_UNTIL_WEIGHTS) + 1 or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:]


def stop(proc: subprocess.Popen) -> None:
    """End serve and the flow-run processes it started (its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    except ProcessLookupError:  # the group has already ended
        pass
