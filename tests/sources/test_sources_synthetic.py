"""Synthetic generator: determinism, span placement and provenance, call format, round trip."""

import ast
import random
from string import Formatter

import pytest

from helpers import write_synthetic_jsonl
from tokenweight.samples import Sample
from tokenweight.sources.chat_files import read_chat_file
from tokenweight.sources.synthetic import FAMILIES, generate_synthetic
from tokenweight.sources.tools_text import format_calls

SAMPLES = generate_synthetic(300, seed=11)


def fields(template):
    return {field for _, field, _, _ in Formatter().parse(template) if field}


def parse_call_line(text):
    """(name, kwargs) from the trailing `[name(k=v, ...)]` line of an answer."""
    call = ast.parse(text.rsplit("\n", 1)[-1], mode="eval").body.elts[0]
    return call.func.id, {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


def masked(content, spans):
    """The content with every reasoning span replaced by `_`: what is left is boilerplate."""
    for start, end in reversed(spans):
        content = content[:start] + "_" + content[end:]
    return content


def test_same_seed_same_samples_other_seed_differs():
    assert generate_synthetic(40, seed=5) == generate_synthetic(40, seed=5)
    assert generate_synthetic(40, seed=5) != generate_synthetic(40, seed=6)
    assert generate_synthetic(40, seed=5)[:10] == generate_synthetic(10, seed=5)


def test_ids_are_unique_and_covers_all_families_and_variants():
    assert len({s.id for s in SAMPLES}) == len(SAMPLES)
    assert {s.meta["family"] for s in SAMPLES} == {f.name for f in FAMILIES}
    assert {s.meta["variant"] for s in SAMPLES} == {"call", "preface", "prose", "multi_turn"}
    assert len(FAMILIES) >= 12


def test_message_shapes():
    for sample in SAMPLES:
        roles = [m["role"] for m in sample.messages]
        expected = ["system", "user", "assistant", "tool", "assistant"] if sample.meta["variant"] == "multi_turn" \
            else ["system", "user", "assistant"]
        assert roles == expected
        assert f"\n{sample.meta['family']}(" in sample.messages[0]["content"]


def test_spans_are_sorted_disjoint_and_inside_assistant_messages():
    for sample in SAMPLES:
        assert sample.reasoning_spans
        for index, spans in sample.reasoning_spans.items():
            message = sample.messages[index]
            assert message["role"] == "assistant"
            ends = [0]
            for start, end in spans:
                assert ends[-1] <= start < end <= len(message["content"])
                ends.append(end)


def test_span_text_is_the_tool_name_or_copied_from_user_or_tool_messages():
    for sample in SAMPLES:
        sources = " ".join(m["content"] for m in sample.messages if m["role"] in ("user", "tool"))
        for index, spans in sample.reasoning_spans.items():
            for start, end in spans:
                text = sample.messages[index]["content"][start:end]
                assert text == sample.meta["family"] or text in sources, (sample.id, text)


def test_call_text_matches_format_calls_and_spans_cover_name_and_values_only():
    for sample in SAMPLES:
        content = sample.messages[2]["content"]
        name, kwargs = parse_call_line(content)
        assert name == sample.meta["family"]
        assert content.endswith(format_calls([(name, kwargs)]))
        call_start = len(content) - len(format_calls([(name, kwargs)]))
        in_call = [content[s:e] for s, e in sample.reasoning_spans[2] if s >= call_start]
        values = [v if isinstance(v, str) else repr(v) for v in kwargs.values()]
        assert in_call == [name, *values]


def test_boilerplate_has_quotes_names_and_punctuation_but_no_values():
    sample = next(s for s in SAMPLES if s.meta["variant"] == "call" and s.meta["family"] == "book_restaurant"
                  and "'s" not in s.messages[2]["content"])
    assert masked(sample.messages[2]["content"], sample.reasoning_spans[2]) == (
        "[_(restaurant='_', party_size=_, date='_', time='_')]")


def test_required_parameters_appear_in_every_request_template():
    for family in FAMILIES:
        required = {p.name for p in family.params if p.required}
        for template in family.requests:
            assert required <= fields(template), (family.name, template)
        assert any(fields(t) <= required for t in family.prose), family.name
        rng = random.Random(0)
        result = family.result(rng, family.values(rng))
        assert any(fields(t) <= required | set(result) for t in family.finals), family.name
        assert len(set(family.prefaces)) >= 2


def test_fixed_text_varies_within_a_family():
    prefaces = {}
    for sample in SAMPLES:
        if sample.meta["variant"] == "preface":
            prefaces.setdefault(sample.meta["family"], set()).add(sample.messages[2]["content"].split("\n")[0])
    assert len(prefaces) == len(FAMILIES)
    assert all(len(found) >= 2 for found in prefaces.values())


def test_prose_restates_values_as_reasoning():
    sample = next(s for s in SAMPLES if s.meta["variant"] == "prose")
    content = sample.messages[2]["content"]
    prose = content.split("\n")[0]
    in_prose = {content[s:e] for s, e in sample.reasoning_spans[2] if e <= len(prose)}
    in_call = {content[s:e] for s, e in sample.reasoning_spans[2] if s > len(prose)}
    assert in_prose and in_prose <= in_call


def test_round_trip_through_jsonl_keeps_messages_and_spans(tmp_path):
    path = tmp_path / "synthetic" / "train.jsonl"
    write_synthetic_jsonl(str(path), 60, seed=3)
    read_back = list(read_chat_file(str(path)))
    generated = generate_synthetic(60, seed=3)
    assert all(isinstance(item, Sample) for item in read_back)
    assert [(s.id, s.messages, s.reasoning_spans) for s in read_back] == [
        (s.id, s.messages, s.reasoning_spans) for s in generated]


@pytest.mark.parametrize("n", [0, 1])
def test_small_counts(n):
    assert len(generate_synthetic(n, seed=0)) == n
