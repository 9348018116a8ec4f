"""GSM answer checking: reading the final number out of generated text, and comparing numbers."""

import pytest

from tokenweight.evals.gsm_answer import answers_match, extract_answer, normalize_number


@pytest.mark.parametrize("text, expected", [
    ("12", "12"),
    ("12.0", "12"),
    ("12.50", "12.5"),
    ("0.5", "0.5"),
    (".5", "0.5"),
    ("-3", "-3"),
    ("\u22123", "-3"),
    ("+7", "7"),
    ("-0.0", "0"),
    (" $1,234.50 ", "1234.5"),
    ("\\$18", "18"),
    ("-$5", "-5"),
    ("50%", "50"),
    ("18.", "18"),
    ("1,000,000", "1000000"),
    ("0.000001", "0.000001"),
    ("1200", "1200"),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1,00", "1,2345", "12 apples", "1e5", "3/4", "$", "-"])
def test_normalize_number_rejects_non_numbers(text):
    assert normalize_number(text) is None


@pytest.mark.parametrize("text, expected", [
    # `The answer is` wins over everything else, and the last one counts.
    ("She has 3 apples and 4 pears, so 7 fruits. The answer is 7.", "7"),
    ("The answer is 5. Wait, recount: the answer is 6. Then 9 more.", "6"),
    ("So the final answer is $1,234.", "1234"),
    ("The answer is: **42**", "42"),
    ("The answer is \\boxed{15}.", "15"),
    ("So the answer is - 10.", "-10"),
    ("The answer is -3 degrees.", "-3"),
    ("The answer is 12.50 dollars", "12.5"),
    ("The answer is 12.0.", "12"),
    ("THE ANSWER IS 8", "8"),
    # `#### X` next, then `\boxed{X}`.
    ("16 - 3 = <<16-3=13>>13 eggs\n#### 1,600\nthanks 2", "1600"),
    ("x = 3 \\boxed{4} #### 5", "5"),
    ("so $x = \\boxed{\\$2{,}500}$ hmm 9", "2500"),
    ("Thus \\boxed{-0.50} is it, not 7", "-0.5"),
    ("Thus \\boxed{\\text{18}}, not 7", "18"),
    # A marker with no number after it falls through to the next rule.
    ("The answer is unclear.\nWe get \\boxed{12}", "12"),
    # Otherwise the last number.
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = $18 a day", "18"),
    ("It costs $3,000.", "3000"),
    ("The temperature fell to -5", "-5"),
    ("a range of 5-3", "3"),
    ("version v1.5 and 0.25 left", "0.25"),
    ("she saves 25%.", "25"),
    ("10 - 4", "4"),
    ("1, 2, 3", "3"),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", ["", "No numbers here.", "The answer is unknown.", "#### x"])
def test_extract_answer_without_a_number(text):
    assert extract_answer(text) is None


@pytest.mark.parametrize("predicted, gold, expected", [
    ("The answer is 12.50.", "12.5", True),
    ("The answer is 12.5", "12.50", True),
    ("The answer is 12", "12.0", True),
    ("#### 1,600", "1600", True),
    ("The answer is 1600", "1,600", True),
    ("The answer is $18.", "18", True),
    ("The answer is -3", "-3", True),
    ("The answer is 3", "-3", False),
    ("The answer is 0.33", "0.333", False),
    ("The answer is 17", "18", False),
    ("I don't know", "18", False),
    ("The answer is 18", "eighteen", False),
    ("5 apples, the answer is 4.", "5", False),
])
def test_answers_match(predicted, gold, expected):
    assert answers_match(predicted, gold) is expected
