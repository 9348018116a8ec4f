"""Sources of samples: chat files (JSONL/Parquet), BFCL data, and the synthetic generator."""
