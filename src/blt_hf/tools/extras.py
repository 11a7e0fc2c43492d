"""Optional dependencies: the model needs only torch, transformers, safetensors and huggingface-hub.

Training, evaluation and the plots import their extra packages through `require`, which names the pip extra to
install when one is missing.
"""

from __future__ import annotations

import importlib

EXTRAS = {
    "datasets": "train",
    "accelerate": "train",
    "evaluate": "eval",
    "lm_eval": "eval",
    "matplotlib": "eval",
}


def require(module: str):
    """Import `module` (a package of an extra, or one of its submodules), or say which extra installs it."""
    package = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if error.name is None or error.name.split(".")[0] != package:
            raise  # the package is there but something it imports is broken: show that error
        extra = EXTRAS.get(package, "dev")
        raise ImportError(
            f"{package} is needed for this and is not installed: pip install 'blt_hf[{extra}]' "
            f"(or pip install {package})"
        ) from error
