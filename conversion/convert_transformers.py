"""Convert transformers' in-tree Blt checkpoints (model_type "blt") to blt_hf folders, and back.

    python conversion/convert_transformers.py SRC_BLT_DIR DST_DIR                     # transformers Blt -> blt_hf
    python conversion/convert_transformers.py SRC_BLT_HF_DIR DST_DIR --to-transformers

Weights are read with safetensors only; the output is written to a temporary folder next to DST and moved into
place at the end, so a failed conversion leaves nothing behind (and an existing non-empty DST is refused). Parameter
names are shared, so every tensor maps one-to-one; a missing or unexpected tensor is an error that lists it.
The same as `blt-hf convert-transformers`. See `blt_hf.convert.transformers_blt`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from blt_hf.tools.cli import main

    raise SystemExit(main(["convert-transformers", *sys.argv[1:]]))
