"""Fingerprints of the code each stage runs, and the record of them beside its version.

A stage's key holds its version (the `version` of its `Stage` declaration), so a change to what a stage computes must bump it, or a store
made by older code keeps serving outputs today's code would not produce. This module makes a
forgotten bump impossible to miss: it fingerprints every tokenweight module a stage's task module
imports, directly or through other tokenweight modules (the AST without docstrings, so comments,
docstrings and formatting do not count), and tests/test_stage_versions.py compares each stage's
fingerprint and version with `stage_code.json`. When the code of a stage changed, the test fails
until one of two things is done, each visible in review:

- its output changed: bump the version in the stage's declaration, then re-record;
- its output did not change (a refactor): re-record only, keeping the version, so that stores
  made before the change stay valid.

    python -m tests.stage_code          # re-record tests/stage_code.json

Why not put the fingerprint in the key itself: then every refactor, even one that changes no
output, would throw away every store's outputs; a recorded fingerprint makes the same change
a decision instead.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
from pathlib import Path

from tokenweight.config import ALL_STAGES as PIPELINE_STAGES

PACKAGE = Path(__file__).resolve().parents[1] / "tokenweight"
RECORD = Path(__file__).with_name("stage_code.json")
# stage -> (module that declares its version, the name of its Stage declaration or version constant)
STAGES = {
    "base_model": ("tokenweight.models", "CONVERT_VERSION"),
    # every pipeline stage, and compare on top: `tokenweight/tasks/{stage}.py` declares `{STAGE} = Stage(...)`
    **{stage: (f"tokenweight.tasks.{stage}", stage.upper()) for stage in (*PIPELINE_STAGES, "compare")},
}


def module_path(name: str, package: Path = PACKAGE) -> Path:
    parts = name.split(".")[1:]
    path = package.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imports(name: str, tree: ast.Module, root: Path) -> set[str]:
    """The tokenweight modules `name` imports (anywhere in the file, lazy imports included)."""
    package = name.split(".")
    if not module_path(name, root).name == "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tokenweight"}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] != "tokenweight":
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names if module_path(f"{target}.{a.name}", root).is_file()}
    return {m for m in found if module_path(m, root).is_file()}


def _normalised(tree: ast.Module) -> str:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)


def closure(module: str, root: Path = PACKAGE) -> dict[str, str]:
    """Every tokenweight module `module` runs (in the package at `root`), with the sha256 of its
    normalised AST."""
    out, todo = {}, [module]
    while todo:
        name = todo.pop()
        if name in out:
            continue
        tree = ast.parse(module_path(name, root).read_text(encoding="utf-8"))
        todo.extend(_imports(name, tree, root))
        out[name] = hashlib.sha256(_normalised(tree).encode()).hexdigest()
    return dict(sorted(out.items()))


def version_of(module: str, name: str) -> str:
    """The version `name` declares in the module's source (without importing it): a constant
    `NAME = "3"`, or the `version=` of a declaration `NAME = Stage(..., version="3", ...)`."""
    for node in ast.walk(ast.parse(module_path(module).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign):
            names = [t for target in node.targets for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            for target, value in zip(names, values):
                if not (isinstance(target, ast.Name) and target.id == name):
                    continue
                if isinstance(value, ast.Call):
                    return next(ast.literal_eval(k.value) for k in value.keywords if k.arg == "version")
                return ast.literal_eval(value)
    raise LookupError(f"{module} declares no {name}")


def current() -> dict[str, dict]:
    """Each stage's version and the fingerprint of the code it runs (with the modules behind it)."""
    out = {}
    for stage, (module, constant) in STAGES.items():
        modules = closure(module)
        digest = hashlib.sha256(json.dumps(modules, sort_keys=True).encode()).hexdigest()[:16]
        out[stage] = {"version": version_of(module, constant), "code": digest, "modules": modules}
    return out


def main() -> None:
    RECORD.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(STAGES)} stages in {RECORD}", file=sys.stderr)


if __name__ == "__main__":
    main()
