"""What stages leave behind and others read, as typed shapes in one place.

- `Manifest`: every output's `_manifest.json` (store.py writes it: files, seconds, plus what the
  stage's work returned and the runner's config and inputs);
- `TrainedModels`: the discriminator's models and how they were cross-fitted (read by score and
  weights);
- `WeightsSummary`: the weights stage's `summary.json` (read by the CLI, the Prefect artifact
  and the role report);
- `EvalMetrics`: the eval stage's `metrics.json` (read by the CLI and compare);
- `TrainRun`: what a finetune output says it did (read by compare).

Each writer builds the shape and each reader reads it through here, so a field is named once.
The JSON they write is unchanged from when these were plain dicts (same keys, same order).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .store import MANIFEST


@dataclass(frozen=True)
class Manifest:
    """A finished output's `_manifest.json`; `info` holds what the stage itself recorded."""

    stage: str
    key: str
    files: dict[str, dict[str, Any]]
    seconds: float
    counts: dict[str, Any]
    config: dict[str, Any]
    inputs: dict[str, str]
    info: dict[str, Any]

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        data = json.loads((Path(directory) / MANIFEST).read_text())
        return cls(data["stage"], data["key"], data["files"], float(data.get("seconds", 0.0)),
                   data.get("counts", {}), data.get("config", {}), data.get("inputs", {}), data)


@dataclass(frozen=True)
class TrainedModels:
    """The discriminator stage's models: `{kind}-{fold}` directories, the reference they make,
    the cross-fitting they follow and how many top blocks they tuned."""

    models: dict[str, dict[str, Any]]  # name -> {kind, fold, steps, losses, ...}
    reference: str  # control | base
    folds: int
    seed: int
    train_layers: int | None

    @classmethod
    def of(cls, manifest: Manifest) -> "TrainedModels":
        info = manifest.info
        return cls(info["trained"], info["reference"], info["cross_fit"]["folds"], info["cross_fit"]["seed"],
                   manifest.config["train_layers"])

    @staticmethod
    def model_name(kind: str, fold: int) -> str:
        """The directory (and `trained` entry) of one fold's discriminator or control."""
        return f"{kind}-{fold}"

    @property
    def kinds(self) -> list[str]:
        """The model kinds per fold, sorted: disc [, control]."""
        return sorted({m["kind"] for m in self.models.values()})


@dataclass(frozen=True)
class WeightsSummary:
    """`summary.json` of the weights stage (DESIGN.md's run summary)."""

    FILE = "summary.json"

    method: str
    reference: str
    margin: float  # the margin used (calibrated when margin_setting is "auto")
    margin_setting: float | str
    min_gap: float  # reasoning also needs p_ref - p_disc above it (0: off)
    granularity: str
    samples: dict[str, int]  # per split
    target_tokens: dict[str, int]  # per class
    boilerplate_share: float
    mean_ld: dict[str, float]  # per class
    top_tokens: dict[str, list[dict[str, Any]]]  # per class: token, id, count
    roles: dict[str, float] | None  # against known roles, when the source knows them
    preflight: dict[str, Any] | None  # preflight.verdict
    critical: dict[str, Any] | None = None  # weights.method critical: the answers' counts (critical stage)

    def write(self, directory: Path) -> Path:
        data = asdict(self)
        for optional in ("roles", "critical"):
            if data[optional] is None:
                del data[optional]
        path = Path(directory) / self.FILE
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False))
        return path

    @classmethod
    def read(cls, directory: Path) -> "WeightsSummary | None":
        path = Path(directory) / cls.FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data.setdefault("min_gap", 0.0)  # written before min_gap existed: its classes are min gap 0
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class EvalMetrics:
    """`metrics.json` of the eval stage."""

    FILE = "metrics.json"

    model: dict[str, str]  # name, key, path
    backend: str
    placement: dict[str, Any]
    samples: int
    checked: int
    accuracy: float | None  # over checked samples; None when nothing could be checked
    accuracy_by_task: dict[str, dict[str, Any]]
    heldout_loss: dict[str, float | None]  # boilerplate, reasoning, all
    heldout_tokens: dict[str, int]
    seconds: dict[str, float]
    generated_tokens_per_s: float

    def write(self, directory: Path) -> Path:
        path = Path(directory) / self.FILE
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def read(cls, directory: Path) -> "EvalMetrics":
        data = json.loads((Path(directory) / cls.FILE).read_text())
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class TrainRun:
    """What a finetune output says its training did (`train` in its manifest)."""

    steps: int
    train_loss: float
    train_seconds: float
    resumed_from: str | None
    trainable_parameters: int
    samples: int

    @classmethod
    def of(cls, manifest: Manifest) -> "TrainRun":
        return cls(**{f.name: manifest.info["train"][f.name] for f in fields(cls)})
