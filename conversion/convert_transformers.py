"""Convert transformers' in-tree Blt checkpoints (model_type "blt") to blt_hf folders, and back.

    python conversion/convert_transformers.py SRC_BLT_DIR DST_DIR                     # transformers Blt -> blt_hf
    python conversion/convert_transformers.py SRC_BLT_HF_DIR DST_DIR --to-transformers

Weights are read with safetensors only; the output is written to a temporary folder next to DST and moved into
place at the end, so a failed conversion leaves nothing behind. Parameter names are shared, so every tensor maps
one-to-one; a missing or unexpected tensor is an error that lists it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


def _read_model_type(folder: Path) -> str:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} has no config.json: not a transformers checkpoint folder")
    return json.loads(config_file.read_text()).get("model_type", "")


def _write_atomically(destination: Path, write) -> None:
    if destination.exists() and any(destination.iterdir()):
        raise ValueError(f"{destination} exists and is not empty")
    destination.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        write(scratch)
        if destination.exists():
            destination.rmdir()
        os.replace(scratch, destination)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def convert(source: str | Path, destination: str | Path, to_transformers: bool = False) -> None:
    from transformers import BltForCausalLM as TransformersBlt

    from blt_hf import BLTForCausalLM, BLTTokenizer
    from blt_hf import conversion_transformers as blt_transformers

    source, destination = Path(source), Path(destination)
    model_type = _read_model_type(source)
    expected = "blt_hf" if to_transformers else "blt"
    if model_type != expected:
        raise ValueError(f"{source} holds a {model_type!r} checkpoint; expected model_type {expected!r}")
    if not any(source.glob("*.safetensors")):
        raise ValueError(f"{source} has no .safetensors weights (other formats are not read, for safety)")
    if to_transformers:
        model = blt_transformers.to_transformers(BLTForCausalLM.from_pretrained(source, use_safetensors=True))
        _write_atomically(destination, model.save_pretrained)
    else:
        model = blt_transformers.from_transformers(TransformersBlt.from_pretrained(source, use_safetensors=True))

        def write(folder):
            model.save_pretrained(folder)
            BLTTokenizer().save_pretrained(folder)

        _write_atomically(destination, write)


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
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main())
