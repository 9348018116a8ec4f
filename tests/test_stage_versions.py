"""A stage's code cannot change without a decision about its version (see tests/stage_code.py)."""

import json
import shutil

from stage_code import PACKAGE, RECORD, closure, current


def test_every_stage_version_was_recorded_with_the_code_it_runs():
    recorded, now = json.loads(RECORD.read_text()), current()
    assert set(recorded) == set(now)
    problems = []
    for stage, cur in now.items():
        rec = recorded[stage]
        if cur["code"] != rec["code"]:
            changed = sorted(m for m in {*cur["modules"], *rec["modules"]}
                             if cur["modules"].get(m) != rec["modules"].get(m))
            problems.append(
                f"{stage}: the code it runs changed ({', '.join(changed)}) since version {rec['version']!r} was "
                f"recorded. If its output changes, bump its version; then re-record: python -m tests.stage_code")
        elif cur["version"] != rec["version"]:
            problems.append(f"{stage}: version {rec['version']!r} -> {cur['version']!r}; re-record: "
                            "python -m tests.stage_code")
    assert not problems, "\n".join(problems)


def test_the_fingerprint_follows_imports_and_ignores_comments_and_docstrings(tmp_path):
    """The weights stage reaches components/token_weights.py through an import: a change in its code
    changes the fingerprint, a comment or a docstring does not."""
    root = tmp_path / "tokenweight"
    shutil.copytree(PACKAGE, root)
    before = closure("tokenweight.tasks.weights", root)
    assert "tokenweight.components.token_weights" in before and "tokenweight.store" in before
    kernel = root / "components" / "token_weights.py"
    source = kernel.read_text()
    kernel.write_text('"""Another docstring."""\n# a comment\n' + source.split('"""', 2)[2])
    assert closure("tokenweight.tasks.weights", root) == before
    kernel.write_text(source + "\nEXTRA = 1\n")
    assert closure("tokenweight.tasks.weights", root)["tokenweight.components.token_weights"] != \
        before["tokenweight.components.token_weights"]
