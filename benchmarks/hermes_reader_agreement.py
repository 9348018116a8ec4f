"""How strict tokenweight's Hermes answer reader is next to BFCL's own, on real model answers.

BFCL scores Hermes-style `<tool_call>` answers with the reader of its Qwen function-calling
handler (`bfcl_eval/model_handler/local_inference/qwen_fc.py`: `_extract_tool_calls` and
`decode_ast`). That module cannot be imported without BFCL's inference dependencies (tree-sitter
and others, which `bfcl-eval` is installed without), so the two functions are compiled from the
installed package's own source, unchanged. Each prediction of an experiment's exported arms
(`tokenweight compare ... --export DIR`) is read both ways and both readings go through BFCL's AST
checker; the table counts where the verdicts agree and lists the answers where they differ.

    python -m benchmarks.hermes_reader_agreement results/bfcl-agent
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.harness import print_table
from tokenweight.evals import bfcl_match
from tokenweight.evals.call_answers import parse_answer
from tokenweight.sources.bfcl import bfcl_data_dir, read_bfcl

BFCL_READER = ("model_handler/local_inference/qwen_fc.py", ("_extract_tool_calls", "decode_ast"))


def bfcl_hermes_reader():
    """BFCL's Qwen-FC `decode_ast(result)`, compiled from the installed package's source."""
    path = bfcl_data_dir().parent / BFCL_READER[0]
    module = ast.parse(path.read_text())
    handler = next(node for node in module.body if isinstance(node, ast.ClassDef) and node.name == "QwenFCHandler")
    wanted = [node for node in handler.body if isinstance(node, ast.FunctionDef) and node.name in BFCL_READER[1]]
    for node in wanted:
        node.decorator_list = []  # @override / @staticmethod: only the bodies are needed
    namespace: dict = {"json": json, "re": re}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)

    class Reader:
        _extract_tool_calls = staticmethod(namespace["_extract_tool_calls"])
        decode_ast = namespace["decode_ast"]

    return lambda text: Reader().decode_ast(text, "Python", True)


# Answers built to differ, one per rule where the readers part: what each one reads from them.
_CALL = '{"name": "f", "arguments": {"x": 1}}'
EDGE_CASES = {
    "no newline inside the tags": f"<tool_call>{_CALL}</tool_call>",
    "an extra key beside name and arguments": '<tool_call>\n{"name": "f", "arguments": {"x": 1}, "id": 0}\n</tool_call>',
    "a second block that is not JSON": f"<tool_call>\n{_CALL}\n</tool_call>\n<tool_call>\n{{oops\n</tool_call>",
    "an unclosed second block": f"<tool_call>\n{_CALL}\n</tool_call>\n<tool_call>\n{_CALL}",
    "text around the block": f"Sure.\n<tool_call>\n{_CALL}\n</tool_call>\nDone.",
}


def _read(reader, text: str) -> str:
    try:
        return json.dumps(reader(text))
    except Exception as error:
        return f"{type(error).__name__}: {str(error)[:60]}"


def bfcl_verdict(reader, text: str, meta: dict) -> bfcl_match.MatchResult:
    try:
        calls = reader(text)
    except Exception as error:  # BFCL's own reader raises ValueError/KeyError/AttributeError
        return bfcl_match.MatchResult(False, f"unparseable: {type(error).__name__}")
    return bfcl_match.check_calls(calls, meta["functions"], meta["ground_truth"], meta["category"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", type=Path, help="a `tokenweight compare --export` folder with predictions/")
    args = parser.parse_args()
    files = sorted((args.export / "predictions").glob("*.parquet"))
    if not files:
        raise SystemExit(f"{args.export}/predictions holds no ARM.parquet")
    tables = {f.stem: pq.read_table(f).to_pylist() for f in files}
    categories = sorted({r["task"].removeprefix("bfcl:") for rows in tables.values() for r in rows})
    metas = {s.id: s.meta for s in read_bfcl(categories, call_format="hermes") if hasattr(s, "meta")}
    reader = bfcl_hermes_reader()
    table, differences = [], []
    for arm, rows in tables.items():
        counts = {"both": 0, "neither": 0, "ours only": 0, "bfcl only": 0}
        for r in rows:
            meta = metas[r["id"]]
            ours = bfcl_match.match_call(r["prediction"], meta["functions"], meta["ground_truth"],
                                         meta["category"], "hermes")
            theirs = bfcl_verdict(reader, r["prediction"], meta)
            key = {(True, True): "both", (False, False): "neither",
                   (True, False): "ours only", (False, True): "bfcl only"}[(ours.valid, theirs.valid)]
            counts[key] += 1
            if ours.valid != theirs.valid:
                differences.append({"arm": arm, "id": r["id"], "ours": ours.error, "bfcl": theirs.error,
                                    "prediction": r["prediction"]})
        n = sum(counts.values())
        table.append([arm, n, *counts.values(), f"{(counts['both'] + counts['neither']) / n:.3f}"])
    print_table("BFCL's verdict on each answer, read by tokenweight's Hermes reader and by BFCL's own",
                ["arm", "answers", "both correct", "neither", "ours only", "BFCL's only", "agreement"], table)
    print_table("Where the two readers' rules part (answers built for it)", ["answer", "tokenweight reads", "BFCL reads"],
                [[name, _read(lambda t: parse_answer(t, "hermes"), text), _read(reader, text)]
                 for name, text in EDGE_CASES.items()])
    for d in differences:
        print(f"\n{d['arm']} {d['id']}: ours {d['ours'] or 'correct'}; BFCL's reader {d['bfcl'] or 'correct'}")
        print("  " + d["prediction"][:400].replace("\n", "\n  "))


if __name__ == "__main__":
    main()
