"""The role suite: five agent formats with known roles, through the real SmolLM2 chat template.

Boilerplate share of the scored target tokens (SmolLM2 tokens, the end-of-turn marker included),
100 samples of each format, seed 0, pinned by test_boilerplate_share_per_format_over_100_samples:

    react      3810 boilerplate / 1429 reasoning   0.727
    hermes     3928 / 1291                         0.753
    python     1233 / 1532                         0.446
    multiturn  4041 / 2157                         0.652
    prose       994 / 1022                         0.493
    all        2862 / 1468                         0.661   (the equal mix, 20 of each)
"""

import ast
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenweight.config import ConfigError, RolesSource, parse_config
from tokenweight.components.chat_encode import assistant_spans, encode_conversation
from tokenweight.role_report import role_table, suite_table
from tokenweight.sources.role_suite import CONSTANT_RESULT_FIELDS, FORMATS, generate_role_suite
from tokenweight.sources.synthetic import FAMILIES
from tokenweight.sources.registry import read_source, source_fingerprint

BY_FORMAT = {fmt: generate_role_suite(120, seed=3, format=fmt) for fmt in FORMATS}
FAMILY = {f.name: f for f in FAMILIES}


def shown(value):
    return value if isinstance(value, str) else repr(value)


def span_texts(sample, index):
    content = sample.messages[index]["content"]
    return [content[s:e] for s, e in sample.reasoning_spans.get(index, [])]


def encode(tokenizer, sample):
    return encode_conversation(tokenizer, sample.messages, sample.reasoning_spans,
                               unscored_spans=sample.unscored_spans)


def roles_of(tokenizer, sample, enc, index, piece, nth=0, after=None):
    """(token text, role) of every token overlapping the nth occurrence of `piece` in message
    `index` (counting from the end of the first `after` when given)."""
    starts = {i: start for i, start, _ in assistant_spans(tokenizer, sample.messages)[1]}
    content = sample.messages[index]["content"]
    at = -1 if after is None else content.index(after) + len(after) - 1
    for _ in range(nth + 1):
        at = content.index(piece, at + 1)
    lo, hi = starts[index] + at, starts[index] + at + len(piece)
    found = [(enc.text[a:b], r) for (a, b), r in zip(enc.offsets, enc.role_truth) if a < hi and b > lo]
    assert found, piece
    return found


def role_set(found):
    return {r for _, r in found}


def first(samples, predicate):
    for sample in samples:
        if predicate(sample):
            return sample
    raise AssertionError("no sample fits")


# --- generation ------------------------------------------------------------------------------------


def test_same_seed_same_samples_other_seed_differs():
    for fmt in (*FORMATS, "all"):
        assert generate_role_suite(30, 5, fmt) == generate_role_suite(30, 5, fmt)
        assert generate_role_suite(30, 5, fmt) != generate_role_suite(30, 6, fmt)
        assert generate_role_suite(30, 5, fmt)[:7] == generate_role_suite(7, 5, fmt)


def test_ids_are_unique_within_and_across_formats():
    ids = [s.id for fmt in (*FORMATS, "all") for s in generate_role_suite(200, 0, fmt)]
    assert len(set(ids)) == len(ids) == 6 * 200


def test_all_is_an_equal_mix_with_the_format_in_meta():
    samples = generate_role_suite(101, 0, "all")
    counts = Counter(s.meta["format"] for s in samples)
    assert counts == {"react": 21, "hermes": 20, "python": 20, "multiturn": 20, "prose": 20}
    for fmt in FORMATS:
        assert {s.meta["format"] for s in BY_FORMAT[fmt]} == {fmt}
    with pytest.raises(ValueError, match="unknown role-suite format 'json'"):
        generate_role_suite(3, 0, "json")


def test_every_family_and_both_multiturn_call_forms_occur():
    for fmt in FORMATS:
        assert {s.meta["family"] for s in generate_role_suite(300, 0, fmt)} == set(FAMILY), fmt
    assert {s.meta["call_form"] for s in BY_FORMAT["multiturn"]} == {"hermes", "python"}


def test_message_shapes():
    for fmt, samples in BY_FORMAT.items():
        for s in samples:
            roles = [m["role"] for m in s.messages]
            assert roles == (["system", "user", "assistant", "tool", "assistant"] if fmt == "multiturn"
                             else ["system", "user", "assistant"]), fmt
            system = s.messages[0]["content"]
            if fmt == "prose":
                assert s.meta["family"] not in system
            else:
                assert s.meta["family"] in system
            if fmt == "hermes" or s.meta.get("call_form") == "hermes":
                assert "<tools>" in system and "<tool_call>" in system
            assert set(s.reasoning_spans) == {i for i, r in enumerate(roles) if r == "assistant"}
            # Unscored text is in calls only: what ends a reasoning value, optional argument names.
            assert (s.unscored_spans is None) if fmt == "prose" else (set(s.unscored_spans) == {2})


def test_spans_are_sorted_disjoint_and_inside_their_message():
    for samples in BY_FORMAT.values():
        for s in samples:
            for index, spans in s.reasoning_spans.items():
                end = 0
                for a, b in spans:
                    assert end <= a < b <= len(s.messages[index]["content"])
                    end = b


# --- what the answers say, and which parts the rules call reasoning -------------------------------


def request_args(sample, answer_args):
    """The call's arguments are exactly values the user request states."""
    user = sample.messages[1]["content"]
    for value in answer_args.values():
        assert shown(value) in user, (sample.id, value)


def test_react_answers_parse_and_each_value_is_reasoning_once():
    pattern = re.compile(r"Thought: ([^\n]*)\nAction: (\w+)\nAction Input: (\{.*\})", re.S)
    restated = 0
    for s in BY_FORMAT["react"]:
        thought, name, args_text = pattern.fullmatch(s.messages[2]["content"]).groups()
        args = json.loads(args_text)
        assert name == s.meta["family"] and name not in thought
        request_args(s, args)
        # The tool name and each value once: in the thought if it restates it, else in the JSON.
        assert Counter(span_texts(s, 2)) == Counter([name, *map(shown, args.values())])
        thought_end = len("Thought: ") + len(thought)
        in_thought = [span for span in s.reasoning_spans[2] if span[1] <= thought_end]
        assert len(in_thought) <= 1
        restated += len(in_thought)
    assert 20 < restated < 100


def test_hermes_answers_parse_and_name_and_values_are_reasoning():
    prefaced = 0
    for s in BY_FORMAT["hermes"]:
        content = s.messages[2]["content"]
        preface, _, call = content.rpartition("<tool_call>\n")
        assert call.endswith("\n</tool_call>") and preface in ("",) + tuple(
            p + "\n" for p in ("Sure, let me check.", "I'll call a tool for that.", "One moment.",
                               "Let me handle that.", "Calling the tool now."))
        prefaced += bool(preface)
        body = json.loads(call[: -len("\n</tool_call>")])
        assert list(body) == ["name", "arguments"] and body["name"] == s.meta["family"]
        request_args(s, body["arguments"])
        assert Counter(span_texts(s, 2)) == Counter([body["name"], *map(shown, body["arguments"].values())])
    assert 30 < prefaced < 90


def python_call(text):
    call = ast.parse(text, mode="eval").body
    assert isinstance(call, ast.List) and len(call.elts) == 1
    return call.elts[0].func.id, {kw.arg: ast.literal_eval(kw.value) for kw in call.elts[0].keywords}


def test_python_answers_are_one_bfcl_call_and_name_and_values_are_reasoning():
    for s in BY_FORMAT["python"]:
        name, args = python_call(s.messages[2]["content"])
        assert name == s.meta["family"]
        request_args(s, args)
        assert Counter(span_texts(s, 2)) == Counter([name, *map(shown, args.values())])


def test_multiturn_final_reasoning_is_exactly_the_non_constant_result_values_it_uses():
    seen_constant = 0
    for s in BY_FORMAT["multiturn"]:
        call = s.messages[2]["content"]
        if s.meta["call_form"] == "python":
            name, args = python_call(call)
        else:
            body = json.loads(call.rpartition("<tool_call>\n")[2][: -len("\n</tool_call>")])
            name, args = body["name"], body["arguments"]
        assert Counter(span_texts(s, 2)) == Counter([name, *map(shown, args.values())])
        result = json.loads(s.messages[3]["content"])
        constant = CONSTANT_RESULT_FIELDS.get(name, frozenset())
        final = s.messages[4]["content"]
        variable = {shown(v) for k, v in result.items() if k not in constant}
        assert set(span_texts(s, 4)) <= variable
        # Every result value the final answer states (and is not a constant) is a span, once.
        stated = [shown(v) for k, v in result.items() if k not in constant and shown(v) in final]
        assert sorted(span_texts(s, 4)) == sorted(stated)
        seen_constant += any(k in constant and shown(result[k]) in final for k in result)
    assert seen_constant > 0


def test_prose_answers_state_request_and_data_values_as_reasoning():
    for s in BY_FORMAT["prose"]:
        user = s.messages[1]["content"]
        request, _, data = user.partition("\n\n")
        spans = span_texts(s, 2)
        assert spans and s.meta["family"] not in s.messages[2]["content"]
        for text in spans:
            assert text in request or text in data.split("\n", 1)[1], (s.id, text)


def test_constant_result_fields_are_the_ones_that_never_vary():
    import random

    constant = {}
    for family in FAMILIES:
        rng = random.Random(0)
        draws = [family.result(rng, family.values(rng)) for _ in range(200)]
        fields = {k for k in draws[0] if len({json.dumps(d[k]) for d in draws}) == 1}
        if fields:
            constant[family.name] = frozenset(fields)
    assert constant == CONSTANT_RESULT_FIELDS


# --- token roles through the real SmolLM2 chat template, checked by hand -------------------------


def test_every_format_renders_through_the_chat_template(smol_tokenizer):
    for fmt, samples in BY_FORMAT.items():
        for s in samples[:25]:
            enc = encode(smol_tokenizer, s)
            truth, mask = np.asarray(enc.role_truth), np.asarray(enc.loss_mask)
            assert {0, 1} <= set(truth[mask == 1].tolist()) <= {-1, 0, 1} and set(truth[mask == 0].tolist()) == {-1}
            # Every reasoning span has a reasoning token; a reasoning token overlaps a span.
            starts = {i: a for i, a, _ in assistant_spans(smol_tokenizer, s.messages)[1]}
            absolute = [(starts[i] + a, starts[i] + b) for i, spans in s.reasoning_spans.items() for a, b in spans]
            for a, b in absolute:
                assert any(r == 1 and x < b and y > a for (x, y), r in zip(enc.offsets, enc.role_truth))
            for (x, y), r in zip(enc.offsets, enc.role_truth):
                assert (r == 1) == any(x < b and y > a for a, b in absolute) or r == -1


def test_react_roles_by_hand(smol_tokenizer):
    # Thought: I need to call a tool for this.\nAction: get_weather\nAction Input: {"city": "...", ...}
    s = first(BY_FORMAT["react"], lambda s: s.meta["family"] == "get_weather" and len(s.reasoning_spans[2]) >= 2
              and s.reasoning_spans[2][0][0] > s.messages[2]["content"].index("Action:"))
    enc = encode(smol_tokenizer, s)
    city = json.loads(s.messages[2]["content"].split("Action Input: ")[1])["city"]
    assert city in s.messages[1]["content"]
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, "get_weather")) == {1}
    assert [t for t, _ in roles_of(smol_tokenizer, s, enc, 2, "get_weather")] == [" get", "_", "weather"]
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, "Action Input:")) == {0}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, "Thought:")) == {0}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, '"city"')) == {0}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, city)) == {1}
    last = max(i for i, m in enumerate(enc.loss_mask) if m)
    assert enc.text[slice(*enc.offsets[last])] == "<|im_end|>" and enc.role_truth[last] == 0


def test_react_value_restated_in_the_thought_is_reasoning_there_and_boilerplate_after(smol_tokenizer):
    s = first(BY_FORMAT["react"], lambda s: s.meta["family"] == "get_weather"
              and s.reasoning_spans[2][0][1] < s.messages[2]["content"].index("Action:"))
    content = s.messages[2]["content"]
    a, b = s.reasoning_spans[2][0]
    value = content[a:b]
    enc = encode(smol_tokenizer, s)
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, value, nth=0)) == {1}
    assert content.count(value) == 2
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, value, nth=1)) == {0}
    # After the repeated (boilerplate) value, its closing quote is boilerplate too: a model that
    # read the thought knows where the value ends.
    repeated_end = content.index(value, content.index(value) + 1) + len(value)
    assert content[repeated_end] == '"'
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, content[repeated_end:repeated_end + 1],
                             after=content[:repeated_end])) == {0}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, "get_weather")) == {1}


def test_hermes_roles_by_hand(smol_tokenizer):
    s = first(BY_FORMAT["hermes"], lambda s: s.meta["family"] == "book_restaurant"
              and not s.messages[2]["content"].startswith("<"))
    content = s.messages[2]["content"]
    args = json.loads(content.split("<tool_call>\n")[1].split("\n</tool_call>")[0])["arguments"]
    enc = encode(smol_tokenizer, s)
    preface = content.split("\n")[0]
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, preface)) == {0}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, "<tool_call>")) == {0}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, "</tool_call>")) == {0}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, '{"name": "')) == {0}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, "book_restaurant")) == {1}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, '"arguments"')) == {0}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, '"party_size": ')) == {0}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, str(args["party_size"]), after='"party_size": ')) == {1}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, args["restaurant"])) == {1}
    # The quote that closes a reasoning value is unscored: whether the value ended there is
    # information; so is the `"` that closes the tool name.
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, '"', after=args["restaurant"])) == {-1}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, '"', after="book_restaurant")) == {-1}


def test_python_roles_by_hand(smol_tokenizer):
    s = first(BY_FORMAT["python"], lambda s: s.messages[2]["content"].startswith("[get_weather(city='"))
    content = s.messages[2]["content"]  # [get_weather(city='Seoul', unit='fahrenheit')]
    _, args = python_call(content)
    enc = encode(smol_tokenizer, s)
    found = roles_of(smol_tokenizer, s, enc, 2, content)
    assert found[0] == ("[", 0)
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, "get_weather")) == {1}
    # `(` ends the tool's name (unscored); `city` is required, so its name is boilerplate.
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, "(")) == {-1}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, "city")) == {0}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, args["city"])) == {1}
    # The last value's closing quote and `)]` end it: unscored.
    assert found[-1][1] == -1 and found[-1][0].endswith(")]")
    if "unit" in args:  # optional: whether the answer gives it depends on the request
        assert role_set(roles_of(smol_tokenizer, s, enc, 2, "unit")) == {-1}


def test_multiturn_roles_by_hand(smol_tokenizer):
    # get_weather -> {"temperature": t, "condition": c} -> "It's t degrees and c in CITY right now."
    s = first(BY_FORMAT["multiturn"], lambda s: s.meta["family"] == "get_weather"
              and s.messages[4]["content"].endswith("right now."))
    result = json.loads(s.messages[3]["content"])
    final = s.messages[4]["content"]
    city = re.search(r" in (.+) right now\.$", final).group(1)
    enc = encode(smol_tokenizer, s)
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, city)) == {1}  # the call took it from the request
    assert role_set(roles_of(smol_tokenizer, s, enc, 4, city)) == {0}  # repeated from its own call
    assert role_set(roles_of(smol_tokenizer, s, enc, 4, str(result["temperature"]), after="It's ")) == {1}
    assert role_set(roles_of(smol_tokenizer, s, enc, 4, result["condition"])) == {1}  # from the tool result
    assert role_set(roles_of(smol_tokenizer, s, enc, 4, "degrees and")) == {0}


def test_multiturn_constant_result_value_is_boilerplate(smol_tokenizer):
    s = first(BY_FORMAT["multiturn"], lambda s: s.meta["family"] == "send_email"
              and " was sent (id " in s.messages[4]["content"])
    result = json.loads(s.messages[3]["content"])
    enc = encode(smol_tokenizer, s)
    assert role_set(roles_of(smol_tokenizer, s, enc, 4, " sent ")) == {0}
    assert role_set(roles_of(smol_tokenizer, s, enc, 4, result["message_id"])) == {1}


def test_prose_roles_by_hand(smol_tokenizer):
    s = first(BY_FORMAT["prose"], lambda s: s.meta["family"] == "get_weather"
              and s.messages[2]["content"].endswith("right now."))
    final = s.messages[2]["content"]
    city = re.search(r" in (.+) right now\.$", final).group(1)
    data = s.messages[1]["content"].split("\n\n", 1)[1]
    enc = encode(smol_tokenizer, s)
    assert city in s.messages[1]["content"].split("\n\n")[0]
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, city)) == {1}
    condition = re.search(r"and (.+) in ", final).group(1)
    assert condition in data
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, condition)) == {1}
    assert role_set(roles_of(smol_tokenizer, s, enc, 2, " degrees and")) == {0}


def test_boilerplate_share_per_format_over_100_samples(smol_tokenizer):
    """The shares in this module's docstring."""
    expected = {"react": (3439, 1422), "hermes": (3528, 1285), "python": (826, 1526),
                "multiturn": (3605, 2149), "prose": (994, 1022), "all": (2534, 1463)}
    got = {}
    for fmt in expected:
        counts = Counter()
        for s in generate_role_suite(100, 0, fmt):
            counts.update(encode(smol_tokenizer, s).role_truth)
        got[fmt] = (counts[0], counts[1])
    assert got == expected


# --- config, prepare, and the per-format report --------------------------------------------------


def test_config_kind_roles():
    cfg = parse_config({"prepare": {"source": {"kind": "roles", "format": "react", "n": 10, "seed": 2}}})
    assert cfg.prepare.source == RolesSource(format="react", n=10, seed=2)
    assert RolesSource().format == "all"
    with pytest.raises(ConfigError, match=r"prepare\.source\.format: Input should be 'all'"):
        parse_config({"prepare": {"source": {"kind": "roles", "format": "json"}}})
    with pytest.raises(ConfigError, match=r"prepare\.source\.path: unknown key"):
        parse_config({"prepare": {"source": {"kind": "roles", "path": "x"}}})


def test_read_source_and_fingerprint():
    source = RolesSource(format="multiturn", n=6, seed=1)
    assert read_source(source) == generate_role_suite(6, 1, "multiturn")
    fingerprint = source_fingerprint(source)
    assert fingerprint["role_suite"] == "2"
    assert set(fingerprint["code"]) == {"role_suite", "synthetic", "tools_text", "call_formats"}
    assert fingerprint == source_fingerprint(RolesSource())  # the code, not the settings (those are in the key)


def test_roles_suite_config_parses():
    from tokenweight.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "roles-suite.yaml")
    assert cfg.prepare.source == RolesSource(format="all", n=300, seed=0)
    assert cfg.prepare.eval_source.kind == "bfcl_roles"
    assert cfg.model.name == "smollm2-135m-instruct"


def _fake_run(tmp_path, rows):
    """A store with one prepared shard, one score shard and a weights manifest pointing at them."""
    store = tmp_path / "store"
    for stage, key, table in (("prepare", "p1", [r[0] for r in rows]), ("score", "s1", [r[1] for r in rows])):
        out = store / stage / key
        out.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(table), out / "part-00000.parquet")
    (store / "score" / "s1" / "_manifest.json").write_text(json.dumps(
        {"stage": "score", "key": "s1", "files": {}, "config": {"disc_context": "foreign"}}))
    weights = store / "weights" / "w1"
    weights.mkdir(parents=True)
    (weights / "_manifest.json").write_text(json.dumps(
        {"stage": "weights", "key": "w1", "files": {}, "inputs": {"prepare": "p1", "score": "s1"}}))
    return weights


def _row(fmt, truth, disc):
    n = len(truth)
    prep = {"split": "train", "text": "x" * n, "offsets": [[i, i + 1] for i in range(n)], "loss_mask": [1] * n,
            "role_truth": truth, "meta": json.dumps({"format": fmt} if fmt else {})}
    score = {"loss_disc": disc, "loss_base": [0.0] * n, "loss_control": [0.0] * n}
    return prep, score


def test_roles_report_has_one_row_per_format_and_setting(tmp_path):
    # Zero losses under both references, so LD is the discriminator's loss; the rows checked are
    # the token-granularity ones ("xxxx" is one word).
    rows = [_row("react", [1, 0, 0, -1], [1.0, 0.0, 1.0, 9.0]),    # tp, tn, fp, unscored
            _row("react", [1, 1, 0, 0], [1.0, 0.0, 0.0, 0.0]),     # tp, fn, tn, tn
            _row("bfcl", [1, 0, -1, -1], [0.0, 0.0, 9.0, 9.0])]    # fn, tn
    out = role_table(_fake_run(tmp_path, rows), [0.5])
    lines = out.splitlines()
    assert lines[2].startswith("| control | foreign | value | 0.5 | 0.0 |")
    per_format = {tuple(c.strip() for c in line.split("|")[1:5]): [c.strip() for c in line.split("|")[6:-2]]
                  for line in lines if line.startswith(("| react", "| bfcl"))}
    # react: 7 scored tokens, 4 of them boilerplate; tp 2, fp 1, fn 1 -> P 0.667, R 0.667.
    assert per_format[("react", "control", "token", "0.5")] == ["7", "0.571", "0.667", "0.667", "0.667"]
    # bfcl: 2 scored tokens (the unscored ones never count), no reasoning predicted.
    assert per_format[("bfcl", "base", "token", "0.5")] == ["2", "0.500", "0.000", "0.000", "0.000"]
    # 2 references x 3 granularities x (the margin given + the calibrated one), per format.
    assert {k[0] for k in per_format} == {"react", "bfcl"} and len(per_format) == 2 * 12
    # No LD is negative here, so the calibrated margin is 0 and every positive LD is reasoning.
    assert per_format[("react", "control", "token", "auto (0.00)")][2:] == ["0.667", "0.667", "0.667"]


def test_roles_report_without_formats_is_the_single_table(tmp_path):
    rows = [_row(None, [1, 0, 0, -1], [1.0, 0.0, 1.0, 9.0])]
    out = role_table(_fake_run(tmp_path, rows), [0.5, 1.0])
    lines = out.splitlines()
    assert len(lines) == 2 + 2 * 3 * 3 and all(line.startswith("| ") for line in lines)
    assert "Per format" not in out


def test_suite_table_chooses_each_setting_on_the_other_formats(tmp_path):
    # Two runs, one format each. On react, margin 0.5 is right (LD 1.0 reasoning, 0.3 noise); on
    # hermes too; on python the reasoning LD is 0.4, so only margin 0.2 finds it. Held out, python
    # gets the setting the other two chose (token level, as "xx" is one word; margin 0.5), which
    # misses its reasoning.
    react = [_row("react", [1, 0], [1.0, 0.3])]
    hermes = [_row("hermes", [1, 0], [1.0, 0.3])]
    python = [_row("python", [1, 0], [0.4, 0.0])]
    dirs = [_fake_run(tmp_path / name, rows) for name, rows in (("r", react), ("h", hermes), ("p", python))]
    out = suite_table(dirs, [0.2, 0.5])
    held = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith("| ") and "held-out" not in line
            and line.split("|")[2].strip().startswith(("control", "base"))}
    assert held["python"][0] == "control, token, 0.5, 0.0" and held["python"][4] == "0.000"
    assert held["python"][5].startswith("1.000")
    # Held out, react gets what hermes and python agree on best (0.2: mean F1 0.833), which calls
    # its 0.3 noise reasoning: choosing on other formats costs it, as it should show.
    assert held["react"][0] == "control, token, 0.2, 0.0" and held["react"][4] == "0.667"
    with pytest.raises(ValueError, match="more than one run"):
        suite_table([dirs[0], dirs[0]], [0.5])


def test_roles_report_tabulates_each_min_gap(tmp_path):
    # Token 0 is a value the control is sure of (LD 1, gap 0.63), token 1 a word both models find
    # hard (LD 2, gap 0.12): LD alone calls both reasoning, a min gap of 0.3 only the value.
    n = 2
    prep = {"split": "train", "text": "a b", "offsets": [[0, 1], [2, 3]], "loss_mask": [1] * n,
            "role_truth": [1, 0], "meta": json.dumps({"format": "prose"})}
    score = {"loss_disc": [1.0, 4.0], "loss_base": [0.0, 0.0], "loss_control": [0.0, 2.0]}
    out = role_table(_fake_run(tmp_path, [(prep, score)]), [0.5], [0.0, 0.3, 0.3])
    rows = {tuple(c.strip() for c in line.split("|")[1:6]): [c.strip() for c in line.split("|")[6:-1]]
            for line in out.splitlines() if line.startswith("| control | foreign | token | 0.5 ")}
    # The setting asked for twice is one row.
    assert set(rows) == {("control", "foreign", "token", "0.5", g) for g in ("0.0", "0.3")}
    assert rows[("control", "foreign", "token", "0.5", "0.0")][1:] == ["0.500", "1.000", "0.667"]
    assert rows[("control", "foreign", "token", "0.5", "0.3")][1:] == ["1.000", "1.000", "1.000"]


def test_calibrated_margin_mirrors_the_negative_side_of_ld():
    from tokenweight.components.token_weights import calibrated_margin

    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.2, 20000)
    ld = np.concatenate([noise, rng.uniform(2.0, 6.0, 5000)])  # symmetric noise plus real reasoning
    m = calibrated_margin(ld)
    assert abs(m - 0.2 * 1.96) < 0.03  # the 95% point of |noise|, untouched by the positive tail
    assert calibrated_margin(np.array([0.5, 1.0])) == 0.0


def test_error_table_lists_the_runs_own_misclassified_tokens(tmp_path):
    """False positives and negatives of the weights stage's classes against the roles, counted per
    token text, with mean LD, an example, and the false positives right after a reasoning token."""
    from tokenweight.role_report import error_table

    rows = [_row(None, [1, 0, 0, -1], [0.0] * 4), _row(None, [0, 1, 0, 0], [0.0] * 4)]
    weights = _fake_run(tmp_path, rows)
    texts = ["ab,c", "xyz."]
    classes = [[1, 1, 1, 1], [0, 0, 1, 0]]  # fp after a value, fp, unscored; fn, fp after a value
    weighted = [{"text": t, "offsets": [[i, i + 1] for i in range(4)], "token_class": c,
                 "loss_disc": [2.0, 3.0, 1.0, 0.0], "loss_ref": [0.0] * 4} for t, c in zip(texts, classes)]
    pq.write_table(pa.Table.from_pylist(weighted), weights / "part-00000.parquet")
    out = error_table(weights, top=5)
    assert out.splitlines()[0] == ("False positives: 3 of 4 tokens classed reasoning; 2 of them (67%) "
                                   "right after a reasoning token.")
    # tp 1, fp 3, fn 1 -> F1 1/3; without the two post-value false positives: tp 1, fp 1, fn 1 -> 1/2.
    assert out.splitlines()[1] == ("Reasoning F1 0.333; with the boilerplate token right after a reasoning token "
                                   "left unscored (as BFCL's rules do): 0.500.")
    assert '| "b" | 1 | +3.00 | `a[b],c` |' in out and '| "," | 1 | +1.00 | `ab[,]c` |' in out
    assert '| "z" | 1 | +1.00 | `xy[z].` |' in out  # right after the reasoning "y"
    assert out.index("false negatives") < out.index('| "y" | 1 | +3.00 | `x[y]z.` |')
