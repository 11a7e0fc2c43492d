"""Byte-ify a Hugging Face Llama checkpoint: a BLT whose global transformer holds the Llama's decoder layers.

    python conversion/convert_llama.py LLAMA_DIR OUT_DIR [--patcher BLT_OR_PATCHER_DIR] [--cross-attn-k 2]
        [--local-hidden-size N] [--local-heads N] [--encoder-layers 1] [--decoder-layers 4] [--window 512]
        [--hash-vocab 50002] [--dtype bfloat16]

The same as `blt-hf convert-llama`. See `blt_hf.convert.llama` for what is copied, dropped and reordered.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from blt_hf.tools.cli import main

    raise SystemExit(main(["convert-llama", *sys.argv[1:]]))
