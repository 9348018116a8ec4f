"""The log every part of tokenweight writes to: Prefect's run logger inside a flow or task run
(so the lines show in the Prefect UI), a plain `tokenweight` logger elsewhere."""

from __future__ import annotations

import logging


def logger() -> logging.Logger:
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()  # type: ignore[return-value]
    except Exception:  # outside a Prefect run context
        return logging.getLogger("tokenweight")
