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

from ..configuration_blt_hf import BLTConfig
from ..evaluation.metrics import check_files, evaluate_bits_per_byte, load_model_and_tokenizer
from .extras import require
from .reports import calibrate_threshold, default_model, patch_report, plot_report, show_report


def _model_argument(value: str | None) -> str:
    model = value or default_model()
    if model is None:
        raise ValueError("give a BLT checkpoint folder with --model (or set BLT_HF_MODEL)")
    return model


def _write_config_atomically(config: BLTConfig, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        config.save_pretrained(scratch)
        os.replace(Path(scratch) / "config.json", directory / "config.json")


def _save_model_atomically(model, directory: Path) -> None:
    from ..convert.checkpoints import check_destination
    from ..tokenization_blt_hf import BLTTokenizer

    check_destination(directory)
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


# commands whose options another parser owns: listed in `blt-hf --help`, their arguments passed on untouched
DELEGATED_COMMANDS = {
    "train": "train a BLT",
    "train-entropy": "train a BLT entropy model (a byte LM)",
    "train-byte-llama": "train the byte-level Llama baseline on the same data",
    "lm-eval": "lm-eval-harness's own command line with the blt_hf model type registered",
}


def _run_delegated(command: str, rest: list[str]) -> int:
    if command == "lm-eval":
        require("lm_eval")
        from ..evaluation.lm_eval_adapter import main as lm_eval_main

        if {"-h", "--help"} & set(rest):
            print("blt-hf lm-eval: lm-eval's own command line (its options below) with `--model blt_hf` registered")
        lm_eval_main(rest)
        return 0
    from ..training.entry_points import parse_options, train_blt, train_byte_llama, train_entropy_model

    entry = {"train": train_blt, "train-entropy": train_entropy_model, "train-byte-llama": train_byte_llama}[command]
    entry(parse_options(rest, DELEGATED_COMMANDS[command], prog=f"blt-hf {command}"))
    return 0


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
    if argv and argv[0] in DELEGATED_COMMANDS:
        return _run_delegated(argv[0], argv[1:])
    parser = OneLineArgumentParser(prog="blt-hf", description="Byte Latent Transformer tools",
                                   epilog="blt-hf COMMAND --help shows a command's options")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or BLT_HF_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    convert.add_argument("--patching-mode", choices=["entropy", "boundary", "static", "space", "byte"])
    convert.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])

    byteify = commands.add_parser("byteify", help="turn a Llama + its tokenizer into a BLT that keeps its knowledge")
    byteify.add_argument("source", help="Llama checkpoint folder with its tokenizer.json")
    byteify.add_argument("destination", help="new BLT folder (must not exist or be empty)")
    byteify.add_argument("--train", nargs="+", required=True, help="training text files")
    byteify.add_argument("--eval", nargs="+", required=True, help="held-out text files")
    byteify.add_argument("--work", help="checkpoints and teacher outputs (default: DESTINATION.work); rerun to resume")
    byteify.add_argument("--teacher-windows", type=positive_int, default=256, help="training windows to distil")
    byteify.add_argument("--tokens-per-window", type=_at_least(8), default=256)
    byteify.add_argument("--batch-windows", type=positive_int, default=8)
    byteify.add_argument("--boundary-steps", type=positive_int, default=400)
    byteify.add_argument("--stage1-steps", type=positive_int, default=1000)
    byteify.add_argument("--stage2-steps", type=_at_least(0), default=0)
    byteify.add_argument("--learning-rate", type=_positive_float, default=1e-3)
    byteify.add_argument("--eval-windows", type=positive_int, default=32)
    byteify.add_argument("--local-hidden-size", type=positive_int, default=256)
    byteify.add_argument("--decoder-layers", type=positive_int, default=4)
    byteify.add_argument("--patching", choices=["auto", "source", "boundary"], default="auto",
                         help="source: the Llama's own token-end odds cut patches and its next-token distribution "
                              "spells bytes (token head; Llamas with tied embeddings); boundary: a trained boundary "
                              "predictor; auto: source when the Llama ties its embeddings")
    byteify.add_argument("--lookahead", action=argparse.BooleanOptionalAction, default=True,
                         help="source patching decides each cut after seeing the next byte (patching_lookahead; "
                              "closer to the Llama, with speculative global-transformer runs)")

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

    for name, summary in DELEGATED_COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)  # parsed by _run_delegated, never here

    args = parser.parse_args(argv)
    if args.command == "push":
        from .hub import push

        print(push(args.folder, args.repo_id, args.model_card, args.private, args.token))
        return 0
    if args.command == "robustness":
        from ..evaluation.robustness import run_suite

        print(run_suite(args.model, args.output, args.hellaswag, args.limit, args.batch_size,
                        words_file=args.words_file, results_json=args.results_json))
        return 0
    if args.command == "eval-bpb":
        print(json.dumps(evaluate_bits_per_byte(args.model, args.files, args.row_length, args.batch_size,
                                                args.split_paragraphs)))
        return 0
    if args.command == "byteify":
        from ..training.byteify import ByteifyOptions, byteify

        options = ByteifyOptions(
            args.source, args.destination, args.train, args.eval, work=args.work,
            teacher_windows=args.teacher_windows, tokens_per_window=args.tokens_per_window,
            batch_windows=args.batch_windows, boundary_steps=args.boundary_steps, stage1_steps=args.stage1_steps,
            stage2_steps=args.stage2_steps, learning_rate=args.learning_rate, eval_windows=args.eval_windows,
            model_options=dict(local_hidden_size=args.local_hidden_size, decoder_layers=args.decoder_layers,
                               patching=args.patching, patching_lookahead=args.lookahead),
        )
        print(json.dumps(byteify(options, log=lambda m: print(m, file=sys.stderr))))
        return 0
    if args.command == "convert-meta":
        from ..convert.meta import convert_meta, convert_meta_entropy_model

        if args.entropy_only:
            convert_meta_entropy_model(args.source, args.destination)
        else:
            convert_meta(args.source, args.destination, entropy_model=args.entropy_model)
        print(f"wrote {args.destination}")
        return 0
    if args.command == "convert-transformers":
        from ..convert.transformers_blt import convert_from_transformers, convert_to_transformers

        convert = convert_to_transformers if args.to_transformers else convert_from_transformers
        convert(args.source, args.destination)
        print(f"wrote {args.destination}")
        return 0
    if args.command == "convert-llama":
        from ..convert.llama import convert_llama

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
        model, _ = load_model_and_tokenizer(_model_argument(args.model))
        report = patch_report(model, os.fsencode(args.text))  # the bytes given, even when not UTF-8
        if args.json:
            printable = {**report, "bytes": report["bytes"].decode("utf-8", "replace")}
            print(json.dumps(printable))
        else:
            print(show_report(report))
        if args.plot:
            plot_report(report, args.plot)
            print(f"plot written to {args.plot}", file=sys.stderr)
        return 0
    if args.command == "calibrate":
        output = args.output or (None if args.model else "blt-hf-calibrated")
        model_dir = _model_argument(args.model)
        check_files(args.files)
        model, _ = load_model_and_tokenizer(model_dir)
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
