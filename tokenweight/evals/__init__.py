"""Answer checkers for the eval stage: BFCL calls and GSM8K numbers."""
