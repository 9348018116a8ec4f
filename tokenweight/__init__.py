"""tokenweight: find the reasoning tokens in agent fine-tuning data (SHAD) and weigh them (RFT)."""

__version__ = "0.1.0"
