"""BFCL answers with roles from the call's syntax tree: characters, SmolLM2 tokens, real categories.

Over the first 100 records of each category (SmolLM2 tokens of the answer, end-of-turn included),
the scored tokens' boilerplate share and the unscored share of all target tokens are:
simple_python 0.328 (605 boilerplate / 1240 reasoning; 746 unscored, 0.288), multiple 0.310
(601 / 1339; 719, 0.270), parallel 0.262 (1138 / 3208; 1923, 0.307), live_simple 0.295
(610 / 1456; 700, 0.253).
"""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import pipeline_config
from tokenweight.config import BfclRolesSource, ConfigError, parse_config
from tokenweight.components.chat_encode import assistant_spans, encode_conversation
from tokenweight.models import resolve_base_model
from tokenweight.samples import Reject, Sample
from tokenweight.sources.bfcl import read_bfcl
from tokenweight.sources.bfcl_roles import AnswerRolesError, answer_roles, read_bfcl_roles, with_roles
from tokenweight.store import Store
from tokenweight.sources.registry import read_source, source_fingerprint
from tokenweight.stage_protocol import run_stage
from tokenweight.tasks.prepare import PREPARE

SPOT_CHECK = ["simple_python", "multiple", "parallel", "live_simple"]


def char_roles(text):
    """One letter per character: R reasoning, U unscored, . boilerplate."""
    reasoning, unscored = answer_roles(text)
    out = ["."] * len(text)
    for spans, letter in ((reasoning, "R"), (unscored, "U")):
        for a, b in spans:
            for i in range(a, b):
                assert out[i] == ".", (text, i)
                out[i] = letter
    return "".join(out)


@pytest.mark.parametrize("text, roles", [
    ("[calculate_triangle_area(base=10, height=5, unit='units')]",
     ".RRRRRRRRRRRRRRRRRRRRRRR.UUUU.RRU.UUUUUU.RU.UUUU..RRRRRUU."),
    # dotted names; a parallel call repeating the name is reasoning again
    ("[math.factorial(number=5), math.factorial(number=10)]",
     ".RRRRRRRRRRRRRR.UUUUUU.RU..RRRRRRRRRRRRRR.UUUUUU.RRU."),
    # lists: elements reasoning, `]` after the last one unscored, and the `,` after the list
    ("[f(x=[1, 2.5, -3], e=[])]",
     ".R.U..RU.RRRU.RRUU.U..UU."),
    # dicts: keys unscored like parameter names, values reasoning; double quotes, None, bools
    ("[f(d={'a': 'Hello!', 'b': True}, s=\"it's\", n=None)]",
     ".R.U...U....RRRRRRUU..U...RRRRUU.U..RRRRUU.U.RRRRU."),
    # characters, not UTF-8 bytes (ast's columns are bytes)
    ("[translate(text='café ☕', lang='fr')]",
     ".RRRRRRRRR.UUUU..RRRRRRUU.UUUU..RRUU."),
])
def test_character_roles_by_hand(text, roles):
    assert char_roles(text) == roles


@pytest.mark.parametrize("text, message", [
    ("f(a=1)", "not a non-empty list of calls"),
    ("[]", "not a non-empty list of calls"),
    ("[f(1)]", "positional"),
    ("[f(**k)]", "positional"),
    ("[f(a=b)]", "'b' is not a literal"),
    ("[f(a=1+2)]", "is not a literal"),
    ("[f(a={1: 2})]", "dict key that is not a string"),
    ("[f()(a=1)]", "not a (dotted) name"),
    ("[3]", "is not a call"),
    ("[f(a=1]", "not Python"),
])
def test_answers_the_roles_cannot_be_read_from(text, message):
    with pytest.raises(AnswerRolesError, match=message.replace("(", r"\(").replace(")", r"\)")):
        answer_roles(text)


def test_a_bad_answer_becomes_a_reject_naming_the_record():
    sample = Sample("x1", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "[f(1)]"}],
                    "/data/BFCL_v4_simple_python.json:7")
    reject = with_roles(sample)
    assert isinstance(reject, Reject)
    assert (reject.file, reject.line, reject.id) == ("/data/BFCL_v4_simple_python.json", 7, "x1")
    assert reject.reason.startswith("answer roles: a call with positional")


def test_token_roles_by_hand(smol_tokenizer):
    """simple_python_0 through the real chat template: every assistant token and its role."""
    sample = next(s for s in read_bfcl_roles(["simple_python"], 1))
    assert sample.messages[-1]["content"] == "[calculate_triangle_area(base=10, height=5, unit='units')]"
    enc = encode_conversation(smol_tokenizer, sample.messages, sample.reasoning_spans,
                              unscored_spans=sample.unscored_spans)
    got = [(enc.text[a:b], r) for (a, b), m, r in zip(enc.offsets, enc.loss_mask, enc.role_truth) if m]
    assert got == [
        ("[", 0), ("calculate", 1), ("_", 1), ("tri", 1), ("angle", 1), ("_", 1), ("area", 1), ("(", 0),
        ("base", -1), ("=", 0), ("1", 1), ("0", 1), (",", -1), (" height", -1), ("=", 0), ("5", 1), (",", -1),
        (" unit", -1), ("='", 0), ("units", 1), ("')]", -1), ("<|im_end|>", 0),
    ]
    # Unscored tokens are still trained: the mask is the same as without any roles.
    assert enc.loss_mask == encode_conversation(smol_tokenizer, sample.messages).loss_mask


def _leaves(value):
    """The literal texts a value's reasoning spans should hold, from the Python data."""
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    text = repr(value)
    return [text[1:-1]] if isinstance(value, str) and text[1:-1] else [] if isinstance(value, str) else [text]


@pytest.mark.parametrize("category", SPOT_CHECK)
def test_real_categories_render_and_parse(category, smol_tokenizer):
    plain = [s for s in read_bfcl([category], 60) if isinstance(s, Sample)]
    with_tree = list(read_bfcl_roles([category], 60))
    assert [s.id for s in with_tree] == [s.id for s in plain] and len(plain) >= 50
    for sample, base in zip(with_tree, plain):
        assert isinstance(sample, Sample)
        assert sample.messages == base.messages and sample.meta == {**base.meta, "format": "bfcl"}
        index = len(sample.messages) - 1
        content = sample.messages[index]["content"]
        reasoning = [content[a:b] for a, b in sample.reasoning_spans[index]]
        # The reasoning spans are, in order, each call's name and its literal values (first
        # acceptable ones, as bfcl.py renders them), computed here from the ground truth's data.
        expected = []
        for call in sample.meta["ground_truth"]:
            (name, args), = call.items()
            expected.append(name)
            for options in args.values():
                if options[0] != "":
                    expected += _leaves(_first(options[0]))
        assert reasoning == expected, sample.id
        enc = encode_conversation(smol_tokenizer, sample.messages, sample.reasoning_spans,
                                  unscored_spans=sample.unscored_spans)
        truth, mask = np.asarray(enc.role_truth), np.asarray(enc.loss_mask)
        assert set(truth[mask == 1].tolist()) == {-1, 0, 1}, sample.id
        # Every parameter name's tokens are unscored.
        start = assistant_spans(smol_tokenizer, sample.messages)[1][0][1]
        for call in sample.meta["ground_truth"]:
            (_, args), = call.items()
            for arg in args:
                if f"{arg}=" in content:
                    at = start + content.index(f"{arg}=")
                    assert {r for (a, b), r in zip(enc.offsets, truth) if a < at + len(arg) and b > at} == {-1}


def _first(value):
    """bfcl.py's first acceptable value, nested dicts resolved."""
    if isinstance(value, dict):
        return {k: _first(v[0]) for k, v in value.items() if v[0] != ""}
    if isinstance(value, list):
        return [_first(v) for v in value]
    return value


def test_every_supported_category_parses():
    from tokenweight.sources.bfcl import available_bfcl_categories

    rejects = [r for r in read_bfcl_roles(available_bfcl_categories()) if isinstance(r, Reject)]
    plain = [r for r in read_bfcl(available_bfcl_categories()) if isinstance(r, Reject)]
    # Only the records bfcl.py itself sets aside: every answer it renders parses.
    assert [(r.file, r.line) for r in rejects] == [(r.file, r.line) for r in plain]


def test_config_source_and_fingerprint():
    cfg = parse_config({"prepare": {"source": {"kind": "bfcl_roles", "categories": ["parallel"],
                                               "limit_per_category": 4}}})
    source = cfg.prepare.source
    assert source == BfclRolesSource(categories=["parallel"], limit_per_category=4)
    with pytest.raises(ConfigError, match=r"prepare\.source\.limit: unknown key"):
        parse_config({"prepare": {"source": {"kind": "bfcl_roles", "limit": 4}}})
    assert [s.id for s in read_source(source)] == ["parallel_0", "parallel_1", "parallel_2", "parallel_3"]
    fingerprint = source_fingerprint(source)
    assert set(fingerprint) == {"bfcl_eval", "files", "bfcl_roles", "code"}
    assert set(fingerprint["files"]) == {"BFCL_v4_parallel.json"} and set(fingerprint["code"]) == {
        "bfcl", "bfcl_roles", "tools_text"}
    with pytest.raises(ValueError, match="unknown BFCL category 'nope'"):
        read_source(BfclRolesSource(categories=["nope"]))


def test_prepare_writes_unscored_tokens_as_minus_one_inside_the_mask(tiny_model_dir, tmp_path):
    cfg = pipeline_config(tiny_model_dir, tmp_path / "store",
                          {"kind": "bfcl_roles", "categories": ["simple_python"], "limit_per_category": 3})
    record = run_stage(PREPARE, cfg, Store(cfg.store), base=resolve_base_model(cfg.model, Store(cfg.store)))
    rows = [row for path in sorted(Path(record.uri).glob("part-*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert len(rows) == 3
    for row in rows:
        assert json.loads(row["meta"])["format"] == "bfcl"
        truth, mask = np.asarray(row["role_truth"]), np.asarray(row["loss_mask"])
        assert set(truth[mask == 0].tolist()) == {-1}
        assert set(truth[mask == 1].tolist()) == {-1, 0, 1}
