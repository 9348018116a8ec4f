"""Dependencies go one way: every import of every tokenweight module (lazy ones inside functions
included, read from the source with ast) against the package's layering rules.

- sources never import evals: a checker may know the format it checks, a source never knows its
  checker;
- components (the computations) import no storage, fault injection, orchestration, CLI or Prefect:
  what they need from those comes in as arguments (a crash point is a `mid_checkpoint` hook);
- only the orchestration (tasks, flows) and its entry points (the CLI, the server) import tasks
  or flows.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tokenweight"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str, package: Path = PACKAGE) -> bool:
    parts = name.split(".")
    if parts[0] != package.name:
        return False
    path = package.joinpath(*parts[1:])
    return (path / "__init__.py").is_file() or path.with_suffix(".py").is_file()


def imports(path: Path, package: Path = PACKAGE) -> set[str]:
    """The absolute names of the modules `path` imports, anywhere in the file; `from x import y`
    gives `x`, and `x.y` too where that is a tokenweight module (`from tokenweight import tasks`)."""
    name = module_name(path, package).split(".")
    here = name if path.name == "__init__.py" else name[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}", package)}
    return found


def violations(package: Path = PACKAGE) -> dict[str, list[str]]:
    """Per rule, one line for each import that breaks it: `module imports name`."""
    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    rules = {
        "sources import no evals": (
            lambda m: under(m, "tokenweight.sources"), ["tokenweight.evals"]),
        "components import no store, faults, tasks, flows, cli or prefect": (
            lambda m: under(m, "tokenweight.components"),
            ["tokenweight.store", "tokenweight.faults", "tokenweight.tasks", "tokenweight.flows",
             "tokenweight.cli", "prefect"]),
        "only tasks, flows, cli and serve import tasks or flows": (
            lambda m: not any(under(m, p) for p in ("tokenweight.tasks", "tokenweight.flows", "tokenweight.cli",
                                                    "tokenweight.serve")),
            ["tokenweight.tasks", "tokenweight.flows"]),
    }
    found = {rule: [] for rule in rules}
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, package)
        names = imports(path, package)
        for rule, (applies, forbidden) in rules.items():
            if applies(module):
                found[rule] += [f"{module} imports {n}" for n in sorted(names) if any(under(n, f) for f in forbidden)]
    return found


RULES = list(violations())


@pytest.mark.parametrize("rule", RULES)
def test_layering(rule):
    bad = violations()[rule]
    assert not bad, f"{rule}:\n" + "\n".join(bad)


@pytest.mark.parametrize("rule, module, line", [
    (RULES[0], "sources/gsm.py", "from tokenweight.evals import gsm_answer"),
    (RULES[1], "components/batching.py", "from ..store import Store"),
    (RULES[1], "components/batching.py", "import prefect.futures"),
    (RULES[1], "components/batching.py", "from .. import faults"),
    (RULES[2], "models.py", "from .tasks.common import run_stage"),
    (RULES[2], "evals/__init__.py", "import tokenweight.flows"),
])
def test_each_rule_can_fail(tmp_path, rule, module, line):
    """A forbidden import, even a lazy one inside a function, is reported by its rule, with the
    module and the name it imports."""
    root = tmp_path / "tokenweight"
    for path in PACKAGE.rglob("*.py"):
        copy = root / path.relative_to(PACKAGE)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    target = root / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n\ndef _lazy():\n    {line}\n", encoding="utf-8")
    before, after = violations(PACKAGE)[rule], violations(root)[rule]
    added = [v for v in after if v not in before]
    assert added, f"{rule} missed `{line}` in {module}"
    assert all(v.startswith(module_name(target, root) + " imports ") for v in added), added
