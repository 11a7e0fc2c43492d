"""`blt-hf`: command-line tools around BLT checkpoints.

    blt-hf patch "Some text" [--model DIR] [--plot out.png]   show the patches and per-byte entropies
    blt-hf calibrate --target-bytes-per-patch 4.5 FILE... [--model DIR] [--rule global|monotonic|combined]
    blt-hf convert-llama LLAMA_DIR OUT_DIR [--patcher DIR] [--cross-attn-k 2] ...
    blt-hf convert-meta BLT_DIR OUT_DIR [--entropy-model DIR] | ENTROPY_DIR OUT_DIR --entropy-only
    blt-hf convert-transformers BLT_DIR OUT_DIR [--to-transformers]   transformers' Blt <-> blt_hf folders
    blt-hf train-entropy --train FILE... --eval FILE... --output DIR [--preset small] [--steps N] ...
    blt-hf train --train FILE... --eval FILE... --output DIR [--preset small] [--patcher DIR] ...
    blt-hf train-byte-llama --train FILE... --eval FILE... --output DIR [--preset small]   (the byte Llama baseline)
    blt-hf lm-eval --model blt_hf --model_args pretrained=DIR --tasks ...     (lm-eval with `blt_hf` registered)
    blt-hf eval-bpb FILE... --model DIR                  held-out bits per byte and realised FLOPs per byte
    blt-hf robustness --model DIR --output report.md      noised HellaSwag + character tasks (markdown table)
    blt-hf push DIR REPO_ID [--model-card MODEL_CARD.md]  upload a complete folder to the Hub

An error in the input (a value, a file, a folder) ends a command with one line `blt-hf: error: ...` on stderr and
exit status 2; `--debug` or BLT_HF_DEBUG=1 shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import torch

from .configuration_blt_hf import BYTE_OFFSET, BLTConfig
from .patching import PatchingRule, compute_patch_lengths


def default_model() -> str | None:
    """$BLT_HF_MODEL, else the bundled default model (models/blt-hf-small-en in a source checkout), else None."""
    from .demo import DEFAULT_MODEL

    if os.environ.get("BLT_HF_MODEL"):
        return os.environ["BLT_HF_MODEL"]
    return str(DEFAULT_MODEL) if (DEFAULT_MODEL / "config.json").is_file() else None


def _model_argument(value: str | None) -> str:
    model = value or default_model()
    if model is None:
        raise ValueError("give a BLT checkpoint folder with --model (or set BLT_HF_MODEL)")
    return model


def _load(model_dir: str):
    from .modeling_blt_hf import BLTForCausalLM
    from .pretrained import _looks_like_a_local_path
    from .tokenization_blt_hf import BLTTokenizer

    try:
        model = BLTForCausalLM.from_pretrained(model_dir).eval()
    except (OSError, ValueError) as error:
        if _looks_like_a_local_path(model_dir):  # the local-path checks say what is wrong with the folder
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OSError(f"{model_dir}: no such checkpoint folder here, and loading it from the Hub failed: "
                      f"{first_line}") from error
    tokenizer = BLTTokenizer().attach_model(model)
    return model, tokenizer


def patch_report(model, text: str) -> dict:
    """Patches and per-byte entropies of `text` (a string, or raw bytes) under the model's patching rule."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    ids = torch.tensor([[1] + [b + BYTE_OFFSET for b in data]])
    base = model.model
    rule = PatchingRule.from_config(base.config)
    lengths, entropies = compute_patch_lengths(ids, None, rule, base.patcher)
    if entropies is None and base.patcher is not None:
        with torch.no_grad():
            entropies = base.patcher(ids).entropies
    data = bytes(int(i) - BYTE_OFFSET for i in ids[0, 1:])
    lengths = [int(n) for n in lengths[0] if n > 0]
    patches, position = [], 0
    for n in lengths:
        patches.append((position, min(position + n, len(data) + 1)))
        position += n
    return {
        "bytes": data,
        "patches": patches,  # [start, end) in positions of ids (0 = BOS); the last may include the virtual position
        "lengths": lengths,
        "entropies": None if entropies is None else entropies[0].tolist(),
        "threshold": rule.threshold if rule.needs_entropies else None,
        "threshold_add": rule.threshold_add if rule.needs_entropies else None,
        "monotonicity": rule.monotonicity if rule.needs_entropies else False,
        "mode": rule.mode,
    }


def _show(report: dict) -> str:
    data = report["bytes"]

    def piece(start, end):
        body = (b"<s>" if start == 0 else b"") + data[max(start - 1, 0) : max(end - 1, 0)]
        return body.decode("utf-8", "replace")

    patches = report["patches"]
    next_opens = patches[-1][0] == len(data) + 1  # the last "patch" holds only the virtual next position
    shown = patches[:-1] if next_opens else patches
    lines = ["|" + "|".join(piece(s, e) for s, e in shown) + "|"]
    lines.append(
        f"{len(data)} bytes in {len(shown)} patches ({report['mode']} patching"
        + (f", threshold {report['threshold']:.4f} nats" if report["threshold"] is not None else "")
        + ("; the next byte starts a new patch)" if next_opens else ")")
    )
    if report["entropies"] is not None:
        starts = {s for s, _ in report["patches"]}
        lines.append("byte      entropy before it (nats)   starts a patch")
        for pos, value in enumerate(report["entropies"], start=1):
            char = repr(bytes([data[pos - 1]]))[2:-1] if pos <= len(data) else "(next)"
            lines.append(f"{char:<8}  {value:>10.4f}                 {'*' if pos in starts else ''}")
    return "\n".join(lines)


def plot_report(report: dict, path: str) -> None:
    """Entropy of the next byte at each position, the threshold and the patch boundaries (after the paper's Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if report["entropies"] is None:
        raise ValueError("this model has no entropy model to plot")
    # the value at byte j is H(j-1): the entropy model's uncertainty about byte j before seeing it
    entropies = report["entropies"]
    labels = [bytes([b]).decode("latin-1") if 32 <= b < 127 else f"\\x{b:02x}" for b in report["bytes"]] + ["next"]
    x = list(range(1, len(entropies) + 1))
    width = max(6.0, 0.22 * len(entropies))
    fig, ax = plt.subplots(figsize=(width, 3.2))
    ax.plot(x, entropies, marker="o", markersize=3, linewidth=1, color="tab:blue", label="entropy before the byte")
    # monotonic and combined rules threshold the rise H(j-1) - H(j-2) (from byte 3 on): plot it where it is used
    rise_threshold = report["threshold"] if report["monotonicity"] else report["threshold_add"]
    if rise_threshold is not None:
        rises = [b - a for a, b in zip(entropies[:-1], entropies[1:], strict=True)]
        ax.plot(x[1:], rises, marker=".", markersize=3, linewidth=0.8, color="tab:orange", label="entropy rise")
        ax.axhline(rise_threshold, color="tab:orange", linestyle=":", linewidth=1, label="rise threshold")
    if report["threshold"] is not None and not report["monotonicity"]:
        ax.axhline(report["threshold"], color="tab:red", linestyle="--", linewidth=1, label="threshold")
    for start, _ in report["patches"][1:]:
        ax.axvline(start - 0.5, color="tab:gray", linewidth=0.8, alpha=0.7)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_xlim(0.5, len(entropies) + 0.5)
    ax.set_ylabel("nats")
    ax.set_title(f"{len(report['patches']) - 1} patches over {len(report['bytes'])} bytes (+ BOS)")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def check_files(files) -> None:
    """FileNotFoundError for the first of `files` that is not a readable file."""
    for name in files:
        if not Path(name).is_file():
            raise FileNotFoundError(f"{name}: no such file" + (" (a folder)" if Path(name).is_dir() else ""))


def _read_rows(files: list[str], row_bytes: int, max_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = []
    total = 0
    for name in files:
        data = Path(name).read_bytes()
        for start in range(0, len(data), row_bytes - 1):
            chunk = data[start : start + row_bytes - 1]
            if not chunk or total >= max_bytes:
                break
            rows.append([1] + [b + BYTE_OFFSET for b in chunk])
            total += len(chunk)
    if not rows:
        raise ValueError("no text to calibrate on")
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask


def bytes_per_patch(rule: PatchingRule, ids, mask, entropies) -> float:
    """Mean patch size in real bytes (BOS excluded) under `rule`, for precomputed entropies."""
    from .cache import PatchingState
    from .patching import patch_lengths_from_starts, row_start_flags

    valid = mask.bool()
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    starts, next_starts, _ = rule(positions, valid, ids, entropies, PatchingState.initial(ids.shape[0], ids.device))
    lengths = patch_lengths_from_starts(row_start_flags(starts, next_starts, positions, valid), valid.sum(1))
    patches = int((lengths > 0).sum()) - ids.shape[0]  # the BOS patch of each row does not count
    return float(valid.sum() - ids.shape[0]) / max(patches, 1)


def calibrate_threshold(
    model, files, target: float, rule_name: str = "global", threshold_add: float | None = None,
    row_bytes: int = 1024, max_bytes: int = 2_000_000, batch_size: int = 16,
) -> tuple[float, float]:
    """Bisect the entropy threshold so that the mean patch size on the files' text is `target` bytes."""
    base = model.model
    if base.patcher is None:
        raise ValueError("calibration needs a model with an entropy model (has_patcher=True)")
    ids, mask = _read_rows(files, row_bytes, max_bytes)
    chunks = []
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch_size):
            chunks.append(base.patcher(ids[start : start + batch_size], mask[start : start + batch_size]).entropies)
    entropies = torch.cat(chunks)
    rule = PatchingRule.from_config(
        base.config, mode="entropy", monotonicity=rule_name == "monotonic",
        threshold_add=threshold_add if rule_name == "combined" else None,
    )
    if rule_name == "combined" and threshold_add is None:
        raise ValueError("--rule combined needs --threshold-add")

    def size(threshold):
        return bytes_per_patch(PatchingRule(**{**rule.__dict__, "threshold": threshold}), ids, mask, entropies)

    low, high = -float(entropies.max()) - 1.0, float(entropies.max()) + 1.0
    if not size(low) <= target <= size(high):
        raise ValueError(
            f"target {target} bytes per patch is outside what this rule reaches on this text "
            f"({size(low):.3f} .. {size(high):.3f})"
        )
    for _ in range(60):
        middle = (low + high) / 2
        if size(middle) < target:
            low = middle
        else:
            high = middle
    threshold = high
    return threshold, size(threshold)


def _write_config_atomically(config: BLTConfig, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        config.save_pretrained(scratch)
        os.replace(Path(scratch) / "config.json", directory / "config.json")


def evaluate_bits_per_byte(model_dir, files, row_length=2048, batch_size=8, split_paragraphs=False) -> dict:
    """Bits per byte of text files (one document per file or paragraph) and the FLOPs per byte actually spent."""
    from .data import add_patch_lengths, pack_documents, text_dataset
    from .flops import realised_flops
    from .metrics import bits_per_byte

    check_files(files)  # before loading the model
    model, _ = _load(model_dir)
    rows = add_patch_lengths(pack_documents(text_dataset(files=files, split_paragraphs=split_paragraphs), row_length),
                             model)
    result = bits_per_byte(model, rows, batch_size)
    lengths = torch.zeros(len(rows), max(len(r) for r in rows["patch_lengths"]), dtype=torch.long)
    for i, row in enumerate(rows["patch_lengths"]):
        lengths[i, : len(row)] = torch.tensor(row)
    flops = realised_flops(model.config, lengths, torch.tensor([sum(m) for m in rows["attention_mask"]]))
    from .flops import llama_flops_per_token

    result.update(
        files=len(files), bytes_per_patch=flops["bytes_per_patch"], forward_flops_per_byte=flops["flops_per_byte"],
        # a byte-level Llama built from the same transformer layers as the global model, run on every byte
        llama_same_layers_forward_flops_per_byte=llama_flops_per_token(model.config.global_config, row_length, 260),
    )
    return result


def _save_model_atomically(model, directory: Path) -> None:
    from .tokenization_blt_hf import BLTTokenizer

    if directory.exists() and any(directory.iterdir()):
        raise ValueError(f"{directory} exists and is not empty")
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent) as scratch:
        model.save_pretrained(scratch)
        BLTTokenizer().save_pretrained(scratch)
        if directory.exists():
            directory.rmdir()
        os.replace(scratch, directory)
        os.makedirs(scratch)  # let TemporaryDirectory clean up an empty folder


def _at_least(minimum: int):
    """An argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _finite_float(text: str) -> float:
    """An argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


positive_int = _at_least(1)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: `prog: error: message (see prog --help)`, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

# errors of bad input (values, files, folders, missing packages) end a command with one line; others are bugs
EXPECTED_ERRORS = (ValueError, OSError, KeyError, ImportError)


def _error_line(error: BaseException) -> str:
    message = f"missing key {error.args[0]!r}" if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(message.split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """`blt-hf`: an expected error prints `blt-hf: error: <message>` (one line on stderr) and returns 2;
    `--debug` (anywhere in the arguments) or BLT_HF_DEBUG=1 raises it with its traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("BLT_HF_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        return run(argv)
    except EXPECTED_ERRORS as error:
        if debug:
            raise
        print(f"blt-hf: error: {_error_line(error)}", file=sys.stderr)
        return 2


def run(argv: list[str]) -> int:
    """Run one `blt-hf` command; errors propagate (see `main`)."""
    if argv and argv[0] == "lm-eval":
        from .lm_eval_adapter import main as lm_eval_main

        lm_eval_main(argv[1:])
        return 0
    if argv and argv[0] in ("train", "train-entropy", "train-byte-llama"):
        from .train import parse_options, train_blt, train_byte_llama, train_entropy_model

        entry, description = {
            "train": (train_blt, "train a BLT"),
            "train-entropy": (train_entropy_model, "train a BLT entropy model (byte LM)"),
            "train-byte-llama": (train_byte_llama, "train the byte-level Llama baseline on the same data"),
        }[argv[0]]
        entry(parse_options(argv[1:], description, prog=f"blt-hf {argv[0]}"))
        return 0
    parser = OneLineArgumentParser(prog="blt-hf", description="Byte Latent Transformer tools")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or BLT_HF_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    patch = commands.add_parser("patch", help="split a text into patches and show per-byte entropies")
    patch.add_argument("text")
    patch.add_argument("--model", help="BLT checkpoint folder (default: $BLT_HF_MODEL or the bundled model)")
    patch.add_argument("--plot", help="write an entropy plot (PNG)")
    patch.add_argument("--json", action="store_true", help="print the report as JSON")

    calibrate = commands.add_parser("calibrate", help="fit the entropy threshold to a target mean patch size")
    calibrate.add_argument("files", nargs="+")
    calibrate.add_argument("--model", help="BLT checkpoint folder (default: $BLT_HF_MODEL or the bundled model)")
    calibrate.add_argument("--target-bytes-per-patch", type=_positive_float, required=True)
    calibrate.add_argument("--rule", choices=["global", "monotonic", "combined"], default="global")
    calibrate.add_argument("--threshold-add", type=_finite_float, help="entropy-rise threshold of the combined rule")
    calibrate.add_argument("--max-bytes", type=positive_int, default=2_000_000, help="sample at most this much text")
    calibrate.add_argument("--output", help="write a whole new checkpoint folder here (default: update the config.json "
                           "of --model in place; without --model: ./blt-hf-calibrated, never the bundled model)")

    convert = commands.add_parser("convert-llama", help="byte-ify a Hugging Face Llama checkpoint folder")
    convert.add_argument("source", help="Llama checkpoint folder (config.json + safetensors)")
    convert.add_argument("destination", help="new BLT folder (must not exist or be empty)")
    convert.add_argument("--patcher", help="copy the entropy model (and its patching settings) from this folder")
    convert.add_argument("--cross-attn-k", type=positive_int, default=2)
    convert.add_argument("--local-hidden-size", type=positive_int, help="default: Llama hidden size / cross-attn-k")
    convert.add_argument("--local-heads", type=positive_int, help="default: 64-dimensional heads")
    convert.add_argument("--encoder-layers", type=positive_int, default=1)
    convert.add_argument("--decoder-layers", type=positive_int, default=4)
    convert.add_argument("--window", type=positive_int, default=512, help="local attention window in bytes")
    convert.add_argument("--hash-vocab", type=positive_int, default=50002, help="rows per hash n-gram table")
    convert.add_argument("--patching-mode", choices=["entropy", "static", "space", "byte"])
    convert.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])

    meta = commands.add_parser("convert-meta", help="convert Meta's released BLT / entropy-model checkpoints")
    meta.add_argument("source", help="official BLT folder (consolidated or Hub layout), or an entropy-model folder")
    meta.add_argument("destination", help="new blt_hf folder (must not exist or be empty)")
    meta.add_argument("--entropy-model", help="entropy-model folder (default: SOURCE/entropy_model when present)")
    meta.add_argument("--entropy-only", action="store_true", help="SOURCE is an entropy model: write a BLTPatcher")

    hf_blt = commands.add_parser("convert-transformers", help="convert transformers' Blt folders to blt_hf and back")
    hf_blt.add_argument("source", help="transformers Blt folder (or a blt_hf folder with --to-transformers)")
    hf_blt.add_argument("destination", help="new folder (must not exist or be empty)")
    hf_blt.add_argument("--to-transformers", action="store_true", help="convert a blt_hf folder to transformers' Blt")

    bpb = commands.add_parser("eval-bpb", help="held-out bits per byte (and realised FLOPs per byte) of text files")
    bpb.add_argument("files", nargs="+")
    bpb.add_argument("--model", required=True, help="BLT checkpoint folder")
    bpb.add_argument("--row-length", type=_at_least(2), default=2048, help="bytes per packed row")
    bpb.add_argument("--batch-size", type=positive_int, default=8)
    bpb.add_argument("--split-paragraphs", action="store_true", help="one document per blank-line paragraph")

    robust = commands.add_parser("robustness", help="noised HellaSwag and CUTE-like character tasks, as markdown")
    robust.add_argument("--model", required=True, help="BLT checkpoint folder")
    robust.add_argument("--output", default="robustness.md")
    robust.add_argument("--hellaswag", default="data/tasks/hellaswag.jsonl", help="from eval/prepare_tasks.py")
    robust.add_argument("--limit", type=positive_int, default=200,
                        help="HellaSwag documents (and character prompts, <= 100)")
    robust.add_argument("--batch-size", type=positive_int, default=8)
    robust.add_argument("--words-file", help="word list for the character tasks, one word per line (e.g. "
                        "/usr/share/dict/words from Debian's wamerican); default: words of the HellaSwag text")
    robust.add_argument("--results-json", help="also write every task's lm-eval metrics here")

    hub = commands.add_parser("push", help="upload a complete BLT folder to the Hugging Face Hub")
    hub.add_argument("folder")
    hub.add_argument("repo_id")
    hub.add_argument("--model-card", help="README.md to upload when the folder has none (e.g. MODEL_CARD.md)")
    hub.add_argument("--private", action="store_true")
    hub.add_argument("--token", help="a Hub token (default: the logged-in one)")

    args = parser.parse_args(argv)
    if args.command == "push":
        from .hub import push

        print(push(args.folder, args.repo_id, args.model_card, args.private, args.token))
        return 0
    if args.command == "robustness":
        from .robustness import run_suite

        print(run_suite(args.model, args.output, args.hellaswag, args.limit, args.batch_size,
                        words_file=args.words_file, results_json=args.results_json))
        return 0
    if args.command == "eval-bpb":
        print(json.dumps(evaluate_bits_per_byte(args.model, args.files, args.row_length, args.batch_size,
                                                args.split_paragraphs)))
        return 0
    if args.command == "convert-meta":
        from .conversion_meta import convert_meta, convert_meta_entropy_model

        if args.entropy_only:
            convert_meta_entropy_model(args.source, args.destination)
        else:
            convert_meta(args.source, args.destination, entropy_model=args.entropy_model)
        print(f"wrote {args.destination}")
        return 0
    if args.command == "convert-transformers":
        from .conversion_transformers import convert_from_transformers, convert_to_transformers

        convert = convert_to_transformers if args.to_transformers else convert_from_transformers
        convert(args.source, args.destination)
        print(f"wrote {args.destination}")
        return 0
    if args.command == "convert-llama":
        from .conversion_llama import convert_llama

        options = dict(cross_attn_k=args.cross_attn_k, local_hidden_size=args.local_hidden_size,
                       local_heads=args.local_heads, encoder_layers=args.encoder_layers,
                       decoder_layers=args.decoder_layers, window=args.window, hash_vocab=args.hash_vocab)
        if args.patching_mode:
            options["patching_mode"] = args.patching_mode
        dtype = getattr(torch, args.dtype) if args.dtype else None
        convert_llama(args.source, args.destination, patcher=args.patcher, dtype=dtype, **options)
        print(f"wrote {args.destination}")
        return 0
    if args.command == "patch":
        model, _ = _load(_model_argument(args.model))
        report = patch_report(model, os.fsencode(args.text))  # the bytes given, even when not UTF-8
        if args.json:
            printable = {**report, "bytes": report["bytes"].decode("utf-8", "replace")}
            print(json.dumps(printable))
        else:
            print(_show(report))
        if args.plot:
            plot_report(report, args.plot)
            print(f"plot written to {args.plot}", file=sys.stderr)
        return 0
    if args.command == "calibrate":
        output = args.output or (None if args.model else "blt-hf-calibrated")
        model_dir = _model_argument(args.model)
        check_files(args.files)
        model, _ = _load(model_dir)
        threshold, achieved = calibrate_threshold(
            model, args.files, args.target_bytes_per_patch, args.rule, args.threshold_add, max_bytes=args.max_bytes
        )
        config = model.config
        config.patching_mode = "entropy"
        config.patching_threshold = threshold
        config.monotonicity = args.rule == "monotonic"
        config.patching_threshold_add = args.threshold_add if args.rule == "combined" else None
        if output:
            _save_model_atomically(model, Path(output))
        else:
            _write_config_atomically(config, Path(model_dir))
        print(json.dumps({"rule": args.rule, "threshold": threshold, "bytes_per_patch": achieved,
                          "written_to": output or model_dir}))
        return 0
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
