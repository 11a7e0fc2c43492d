"""Checkpoint converters into blt_hf folders (run as scripts: python conversion/convert_*.py SRC DST)."""
