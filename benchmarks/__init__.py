"""On-demand benchmarks: `python -m benchmarks.<name> --help`. Each prints our figure next to a named
baseline measured in the same run, on the same inputs, and appends a JSON line to
benchmarks/results.jsonl with the machine and the versions."""
