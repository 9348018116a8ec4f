"""`tokenweight serve CONFIG.yaml`: the pipeline and compare flows as Prefect deployments, no infrastructure.

`prefect.serve` registers two deployments with the Prefect API (`tokenweight-run/NAME` and
`tokenweight-run-compare/NAME`, parameters: this config and its overrides) and runs their flow runs
as subprocesses of this process, in this directory and with this environment, until it is stopped.
Runs are started from the UI, `prefect deployment run`, or the schedule (`--cron`/`--interval`,
for the pipeline only). With work pools and workers instead: deploy/prefect.yaml.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import ALL_STAGES, ConfigError


def serve(config: str, overrides: list[str], name: str | None = None, until: str = "eval",
          cron: str | None = None, interval: int | None = None, limit: int | None = None) -> None:
    """Serve the pipeline and compare deployments for `config` until interrupted (blocks)."""
    from prefect import serve as prefect_serve
    from prefect.settings import get_current_settings
    from prefect.types.entrypoint import EntrypointType

    from .flows.deployed import compare_run, load_run_config, pipeline_run

    load_run_config(config, overrides)  # a bad config fails now, not in every run
    if not get_current_settings().api.url:
        # Without one Prefect would start a temporary API inside this process: no UI to trigger
        # or watch runs, and the deployments vanish with it.
        raise ConfigError("serve needs a Prefect API: run `prefect server start`, then set "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api")
    # The flow runs are subprocesses of this one and inherit its environment.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    name = name or Path(config).stem
    parameters = {"config": config, "overrides": list(overrides)}
    # A module entrypoint: the flow runs import the installed package, wherever serve was started.
    module = EntrypointType.MODULE_PATH
    deployments = [
        pipeline_run.to_deployment(name, parameters={**parameters, "until": until}, cron=cron, interval=interval,
                                   entrypoint_type=module, tags=["tokenweight"]),
        compare_run.to_deployment(name, parameters=parameters, entrypoint_type=module, tags=["tokenweight"]),
    ]
    prefect_serve(*deployments, limit=limit)


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    """The `serve` subcommand's arguments (handled by serve_command)."""
    command = subparsers.add_parser("serve", help="serve the pipeline and compare flows as Prefect deployments "
                                                  "(needs PREFECT_API_URL)")
    command.add_argument("config", help="pipeline config (YAML); a relative path resolves against this directory")
    command.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                         help="override a config value (repeatable), passed to every run as a parameter")
    command.add_argument("--name", help="deployment name (default: the config file's name without .yaml)")
    command.add_argument("--until", choices=ALL_STAGES, default="eval", help="the pipeline runs stop after this stage")
    when = command.add_mutually_exclusive_group()
    when.add_argument("--cron", help="run the pipeline on this cron schedule (UTC), e.g. '0 2 * * *' for nightly")
    when.add_argument("--interval", type=int, metavar="SECONDS", help="run the pipeline every this many seconds")
    command.add_argument("--limit", type=int, help="run at most this many flow runs at once")
    command.add_argument("--debug", action="store_true", help="show tracebacks")


def serve_command(args: argparse.Namespace) -> int:
    """Run `tokenweight serve`; a config the user can fix is one line on stderr and exit code 2."""
    try:
        serve(args.config, args.overrides, name=args.name, until=args.until, cron=args.cron,
              interval=args.interval, limit=args.limit)
    except ConfigError as err:
        if args.debug:
            raise
        print(f"tokenweight: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return 0
