"""Publishing a BLT folder to the Hugging Face Hub (`blt-hf push DIR REPO_ID`).

The folder must be complete before anything is sent: config.json of model_type blt_hf with its `auto_map`, the
code files it names (so `trust_remote_code=True` works where blt_hf is not installed), safetensors weights, the
tokenizer config and a README.md model card (taken from `--model-card` when the folder has none).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi

REQUIRED = ("config.json", "tokenizer_config.json", "README.md")


def check_folder(folder: Path) -> list[str]:
    """The files that would be uploaded; ValueError naming what is missing."""
    problems = [name for name in REQUIRED if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")):
        problems.append("*.safetensors weights")
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        if config.get("model_type") != "blt_hf":
            problems.append(f"a blt_hf config.json (found model_type {config.get('model_type')!r})")
        for target in (config.get("auto_map") or {}).values():
            module = (target[0] if isinstance(target, list) else target).split(".")[0]
            if not (folder / f"{module}.py").is_file():
                problems.append(f"{module}.py (named by auto_map)")
        if not config.get("auto_map"):
            problems.append("auto_map in config.json (save with an imported blt_hf)")
    if problems:
        raise ValueError(f"{folder} cannot be pushed, it lacks: {', '.join(problems)}")
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def push(folder: str | Path, repo_id: str, model_card: str | Path | None = None, private: bool = False,
         token: str | None = None, commit_message: str = "Upload BLT (blt_hf)", api: HfApi | None = None) -> str:
    """Upload a complete BLT folder; returns the commit URL (or whatever the API returns)."""
    folder = Path(folder)
    with tempfile.TemporaryDirectory() as staging:
        staged = Path(staging) / folder.name
        shutil.copytree(folder, staged, ignore=shutil.ignore_patterns("checkpoint-*", "optimizer.pt", "*.bin"))
        if model_card is not None and not (staged / "README.md").is_file():
            shutil.copyfile(model_card, staged / "README.md")
        check_folder(staged)
        api = api or HfApi(token=token)
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(folder_path=str(staged), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message)
