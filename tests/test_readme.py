"""The README's promises that code can check: its opening commands and its config reference."""

from pathlib import Path

from tokenweight.config import reference_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def test_config_reference_matches_the_config_classes():
    text = README.read_text(encoding="utf-8")
    section = _between(text, "<!-- config-reference:start -->\n", "<!-- config-reference:end -->")
    assert section == reference_markdown(), "regenerate it: python -m tokenweight.config"


def test_readme_opens_with_the_two_commands():
    first_block = _between(README.read_text(encoding="utf-8"), "```bash\n", "```")
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    makefile = (README.parent / "Makefile").read_text(encoding="utf-8")
    assert "\ndemo:" in makefile and "\ntest:" in makefile
