"""Convert Meta's released BLT checkpoints into blt_hf folders.

    python conversion/convert_meta.py BLT_DIR OUT_DIR [--entropy-model ENTROPY_DIR]   # a BLT (+ its entropy model)
    python conversion/convert_meta.py ENTROPY_DIR OUT_DIR --entropy-only              # a standalone entropy model

BLT_DIR is either the consolidated layout (params.json + consolidated.pth, entropy model in BLT_DIR/entropy_model)
or the Hub-mixin layout (config.json with "args", model.safetensors, train_args.json; the entropy model is a
separate folder such as facebook/blt-entropy). Weights are read with safetensors or torch.load(weights_only=True).
The same as `blt-hf convert-meta`. See `blt_hf.convert.meta` for the key tables and the derived config.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from blt_hf.tools.cli import main

    raise SystemExit(main(["convert-meta", *sys.argv[1:]]))
