"""The Parquet schemas of every stage's data files, in one place (DESIGN.md's shard schema).

A stage that reads another's files, or carries its columns on (the weights stage carries the
prepared sample's columns into the weighted dataset), imports the schema from here, never from
the other stage's module.
"""

from __future__ import annotations

import pyarrow as pa

# The sample's columns, written by prepare and carried unchanged into the weighted dataset.
SAMPLE_FIELDS = [
    ("id", pa.string()),
    ("split", pa.string()),
    ("text", pa.string()),
    ("input_ids", pa.list_(pa.int32())),
    ("offsets", pa.list_(pa.list_(pa.int32()))),
    ("loss_mask", pa.list_(pa.int8())),
]

# prepare: `part-*.parquet`
PREPARED = pa.schema(
    [
        *SAMPLE_FIELDS,
        ("role_truth", pa.list_(pa.int8())),  # null unless the source knows the token roles
        ("messages", pa.string()),  # JSON, for the shuffle stage to re-pair
        ("meta", pa.string()),  # JSON
    ]
)

# shuffle: `shuffled.parquet` and `matched.parquet`
SHUFFLED = pa.schema(
    [
        ("id", pa.string()),
        ("output_from", pa.string()),  # id of the sample whose assistant turns this row carries
        ("text", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.int8())),
        ("fold", pa.int8()),  # the part of the train split the sample (and its donor) come from
    ]
)

# score: `part-*.parquet`, rows in the order of the prepared shard of the same index
SCORES = pa.schema(
    [
        ("id", pa.string()),
        ("loss_base", pa.list_(pa.float32())),
        ("loss_disc", pa.list_(pa.float32())),
        ("loss_control", pa.list_(pa.float32())),  # null when the reference is the base model
        ("scored_by", pa.int8()),  # the fold whose discriminator (and control) scored the row
    ]
)

# critical: `part-*.parquet`, rows in the order of the prepared shard of the same index
CRITICAL = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        # accepted | wrong (the checker rejected the greedy answer) | unchecked (no checker for the
        # sample) | unencodable (the template cannot render the answer) | eval (not probed)
        ("status", pa.string()),
        ("answer", pa.string()),  # the base model's greedy answer (null where none was generated)
        ("answer_ids", pa.list_(pa.int32())),
        ("answer_critical", pa.list_(pa.int8())),  # per answer token: 1 critical, 0 not (accepted only)
        ("kept", pa.list_(pa.list_(pa.bool_()))),  # per answer token and substitute: still accepted? (null: not probed)
        # The training sample the accepted answer becomes (null otherwise): SAMPLE_FIELDS but id and split
        ("text", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("offsets", pa.list_(pa.list_(pa.int32()))),
        ("loss_mask", pa.list_(pa.int8())),
        ("critical", pa.list_(pa.int8())),  # per token of input_ids: -1 off target, 1 critical, 0 not
        ("loss_base", pa.list_(pa.float32())),  # per token of input_ids, under the base model
    ]
)

# weights: `part-*.parquet`, the weighted dataset (DESIGN.md's shard schema)
WEIGHTED = pa.schema(
    [
        *SAMPLE_FIELDS,
        ("loss_base", pa.list_(pa.float32())),
        ("loss_disc", pa.list_(pa.float32())),
        ("loss_ref", pa.list_(pa.float32())),
        ("token_class", pa.list_(pa.int8())),
        ("weight", pa.list_(pa.float32())),
    ]
)

# eval: `predictions.parquet`, one row per eval sample
PREDICTIONS = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),  # bfcl:<category> | gsm8k | none
        ("prediction", pa.string()),
        ("correct", pa.bool_()),  # null where the sample has nothing to check against
        ("error", pa.string()),
        ("gold", pa.string()),
        ("new_tokens", pa.int32()),
        ("loss_boilerplate_sum", pa.float64()),
        ("boilerplate_tokens", pa.int32()),
        ("loss_reasoning_sum", pa.float64()),
        ("reasoning_tokens", pa.int32()),
    ]
)
