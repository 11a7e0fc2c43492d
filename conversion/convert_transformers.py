"""Convert transformers' in-tree Blt checkpoints (model_type "blt") to blt_hf folders, and back.

    python conversion/convert_transformers.py SRC_BLT_DIR DST_DIR                     # transformers Blt -> blt_hf
    python conversion/convert_transformers.py SRC_BLT_HF_DIR DST_DIR --to-transformers

Weights are read with safetensors only; the output is written to a temporary folder next to DST and moved into
place at the end, so a failed conversion leaves nothing behind (and an existing non-empty DST is refused). Parameter
names are shared, so every tensor maps one-to-one; a missing or unexpected tensor is an error that lists it.
See `blt_hf.convert.transformers_blt`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def convert(source: str | Path, destination: str | Path, to_transformers: bool = False) -> None:
    from blt_hf.convert.transformers_blt import convert_from_transformers, convert_to_transformers

    (convert_to_transformers if to_transformers else convert_from_transformers)(source, destination)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("destination")
    parser.add_argument("--to-transformers", action="store_true", help="convert a blt_hf folder to transformers' Blt")
    args = parser.parse_args(argv)
    convert(args.source, args.destination, args.to_transformers)
    print(f"wrote {args.destination}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    raise SystemExit(main())
