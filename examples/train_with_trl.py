"""Fine-tune a model on tokenweight's weight shards with TRL's SFTTrainer (trl 1.x).

    python examples/train_with_trl.py runs/weights/<key> path/to/model --output out --max-steps 20

The shards are tokenized already, so TRL's dataset preparation is skipped and tokenweight's
collator builds the labels from `loss_mask`; the loss is tokenweight's `weighted` (see
tokenweight/external_trainers.py), and TRL still logs its entropy and token accuracy.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from tokenweight.external_trainers import TokenWeightMixin, WeightedTokenCollator, load_weight_shards


class WeightedSFTTrainer(TokenWeightMixin, SFTTrainer):
    """SFTTrainer with tokenweight's `weighted` loss (the mixin comes first: it pops token_weight)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shards", help="the weights stage's directory (its part-*.parquet), or a glob of shards")
    p.add_argument("model", help="a local Hugging Face model directory (with its tokenizer)")
    p.add_argument("--output", default="weighted-model", help="where the trained model is saved")
    p.add_argument("--max-steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (TRL's default; off here for CPUs)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    a = parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    if tokenizer.pad_token is None:  # any token will do: padding is masked out of attention and loss
        tokenizer.pad_token = tokenizer.eos_token
    args = SFTConfig(
        output_dir=a.output, max_steps=a.max_steps, per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=a.grad_accum, learning_rate=a.learning_rate, logging_steps=1,
        save_strategy="no", report_to=[], bf16=a.bf16,
        remove_unused_columns=False,  # the collator needs loss_mask and weight
        dataset_kwargs={"skip_prepare_dataset": True},  # tokenized and truncated by tokenweight already
    )
    trainer = WeightedSFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(a.model, use_safetensors=True),
        args=args,
        train_dataset=load_weight_shards(a.shards, split="train"),
        processing_class=tokenizer,
        data_collator=WeightedTokenCollator(pad_token_id=tokenizer.pad_token_id),
    )
    trainer.train()
    trainer.save_model(a.output)


if __name__ == "__main__":
    main()
