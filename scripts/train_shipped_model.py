"""Train blt_hf's shipped default model and its FLOP-matched baselines on real English text, then ship it.

Stages (every one resumable: run the script again and it goes on where it stopped; training resumes from the last
checkpoint, finished stages are skipped):

  corpus     scripts/prepare_corpus.py -> data/corpus (train / held out by work, genre and year)
  entropy    the entropy model, a small byte LM (`blt-hf train-entropy`)
  calibrate  mean bytes per patch of space patching on training text; the entropy threshold and the static patch
             size that give the same mean, so the three BLTs spend about the same FLOPs per byte
  runs       blt-entropy, blt-space, blt-static and byte-llama (vocabulary 260), each trained for the same training
             FLOPs: the budget is blt-entropy's steps; the others' steps follow from their FLOPs per byte
  measure    on the whole held-out set: bits per byte, bytes per patch, inference FLOPs per byte, decode bytes/s
  plot       held-out bits per byte against training FLOPs (PNG)
  ship       blt-entropy -> models/blt-hf-small-en (safetensors, config, tokenizer, remote code, model card) and the
             held-out sample and bound that tests/test_shipped_model.py checks
  byteify    SmolLM2-135M converted by the Llama converter and trained briefly, against a from-scratch BLT of the
             same shape for the same steps
  card       MODEL_CARD.md -> the shipped folder's README.md (with its figure); its remote code from src

Training FLOPs follow the paper's accounting: 3 x forward FLOPs, exact counts of blt_hf's computation with the
patches each row really gets (entropy-model FLOPs excluded: patches are precomputed). Logs go to
eval/results/shipped/, the summary to eval/results/shipped/summary.json (last line printed: one JSON line).

    nohup python scripts/train_shipped_model.py > runs/shipped.log 2>&1 &
    python scripts/train_shipped_model.py --only measure plot      # a subset of stages
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RUN = REPO / "runs" / "shipped"
RESULTS = REPO / "eval" / "results" / "shipped"
SHIPPED = REPO / "models" / "blt-hf-small-en"
SAMPLE = REPO / "tests" / "data" / "heldout_sample.txt"
STAGES = ("corpus", "entropy", "calibrate", "runs", "measure", "plot", "ship", "byteify", "card")

ROW, BATCH = 1024, 8
ENTROPY_STEPS = 2000
BLT_ENTROPY_STEPS = 1000  # sets the training-FLOP budget of every run (about 20 minutes on 2 cores)
BYTEIFY_STEPS, BYTEIFY_BATCH = 80, 4
RUN_NAMES = ("blt-entropy", "blt-space", "blt-static", "byte-llama")
SELECTED_RUNS = list(RUN_NAMES)  # --runs narrows the runs and measure stages
PROGRESS = re.compile(r"(it/s|s/it|examples/s)\]\s*$")


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def run_logged(command: list[str], log_file: Path) -> None:
    """Run a training command; its output, minus progress bars, goes to `log_file` (appended: resumes add to it)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    with open(log_file, "a") as handle:
        handle.write(f"$ {' '.join(command[:4])} ...\n")
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        for line in process.stdout:
            for piece in line.split("\r"):
                if piece.strip() and not PROGRESS.search(piece):
                    handle.write(piece.rstrip("\n") + "\n")
                    handle.flush()
        if process.wait():
            raise RuntimeError(f"{command[:4]} failed; see {log_file}")


def corpus_files() -> tuple[list[str], list[str]]:
    corpus = REPO / "data" / "corpus"
    return (sorted(str(p) for p in (corpus / "train").glob("*.txt")),
            sorted(str(p) for p in (corpus / "heldout").glob("*.txt")))


def common_options() -> dict:
    train, heldout = corpus_files()
    return dict(train=train, eval=heldout, row_length=ROW, batch_size=BATCH, warmup_steps=100, logging_steps=25,
                save_steps=100, max_eval_rows=128, seed=0, data_cache=str(RUN / "data"), resume=True,
                weight_decay=0.1, learning_rate=1e-3)


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".partial")
    scratch.write_text(json.dumps(value, indent=2))
    os.replace(scratch, path)


def finished(output: Path, steps: int) -> bool:
    metrics = read_json(output / "metrics.json")
    return metrics is not None and metrics["steps"] >= steps and (output / "final").is_dir()


def train(command: str, name: str, options: dict) -> None:
    if finished(Path(options["output"]), options["steps"]):
        log(f"{name}: done")
        return
    path = RUN / "options" / f"{name}.json"
    write_json(path, options)
    log(f"{name}: training {options['steps']} steps")
    run_logged([sys.executable, "-m", "blt_hf.tools.cli", command, "--options", str(path)], RESULTS / f"{name}.log")


# ------------------------------------------------------------------------------------------------ stages
def stage_corpus() -> None:
    subprocess.run([sys.executable, "scripts/prepare_corpus.py", "--out", "data/corpus"], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)


def stage_entropy() -> None:
    # weight_decay 0: the shipped entropy model was trained before train-entropy honoured --weight-decay
    train("train-entropy", "entropy", dict(common_options(), preset="small", steps=ENTROPY_STEPS,
                                           learning_rate=2e-3, weight_decay=0.0, eval_steps=250,
                                           output=str(RUN / "entropy")))


def _calibration_sample() -> list[str]:
    """Training files in a fixed shuffled order (every source, not just the first alphabetically)."""
    train, _ = corpus_files()
    random.Random(0).shuffle(train)
    return train


def stage_calibrate() -> None:
    if (RUN / "calibration.json").is_file():
        return
    from blt_hf.patching import PatchingRule
    from blt_hf.tools.reports import bytes_per_patch, calibrate_threshold, read_byte_rows
    from blt_hf.training.entry_points import TrainOptions, build_blt
    from blt_hf.training.presets import blt_config

    files = _calibration_sample()
    ids, mask = read_byte_rows(files, ROW, 2_000_000)
    space = bytes_per_patch(PatchingRule.from_config(blt_config("small", patching_mode="space")), ids, mask, None)
    write_json(RUN / "configs" / "blt-entropy.json", blt_config("small").to_dict())
    model = build_blt(TrainOptions(config=str(RUN / "configs" / "blt-entropy.json"), patcher=str(RUN / "entropy" /
                                                                                                 "final")))
    threshold, achieved = calibrate_threshold(model, files, space, "global", max_bytes=2_000_000)
    calibration = {"sample_bytes": int(mask.sum()), "space_bytes_per_patch": space, "entropy_threshold": threshold,
                   "entropy_bytes_per_patch": achieved, "static_patch_size": round(space)}
    write_json(RUN / "calibration.json", calibration)
    log(f"calibration: {calibration}")


def run_configs() -> dict[str, dict]:
    """Options of every FLOP-matched run (steps filled in by `budget`)."""
    from blt_hf.training.presets import blt_config

    calibration = read_json(RUN / "calibration.json")
    configs = {
        "blt-entropy": blt_config("small", patching_mode="entropy",
                                  patching_threshold=calibration["entropy_threshold"]),
        "blt-space": blt_config("small", patching_mode="space"),
        "blt-static": blt_config("small", patching_mode="static", patch_size=calibration["static_patch_size"]),
    }
    runs = {}
    for name, config in configs.items():
        path = RUN / "configs" / f"{name}.json"
        write_json(path, config.to_dict())
        runs[name] = dict(common_options(), config=str(path), output=str(RUN / name),
                          **({"patcher": str(RUN / "entropy" / "final")} if name == "blt-entropy" else {}))
    runs["byte-llama"] = dict(common_options(), preset="small", output=str(RUN / "byte-llama"))
    return runs


def training_flops_per_byte(name: str, options: dict) -> dict:
    """3 x the exact forward FLOPs per byte on 256 training rows spread over the data, with their own patches."""
    import torch

    from blt_hf.evaluation.flops import llama_flops_per_token, realised_flops
    from blt_hf.training.baselines import byte_llama_config
    from blt_hf.training.entry_points import TrainOptions, build_blt, packed_rows

    if name == "byte-llama":
        config = byte_llama_config("small", max_position_embeddings=ROW)
        return {"training_flops_per_byte": 3 * llama_flops_per_token(config, ROW, config.vocab_size),
                "bytes_per_patch": 1.0}
    opts = TrainOptions(**options)
    model = build_blt(opts)
    rows = packed_rows(opts.train, opts, model)  # cached in RUN/data: the training run reuses these patches
    picks = [int(i) for i in torch.linspace(0, len(rows) - 1, 256).round().tolist()]
    sample = rows.select(picks)
    lengths = torch.zeros(len(sample), max(len(r) for r in sample["patch_lengths"]), dtype=torch.long)
    for i, row in enumerate(sample["patch_lengths"]):
        lengths[i, : len(row)] = torch.tensor(row)
    flops = realised_flops(model.config, lengths, torch.tensor([sum(m) for m in sample["attention_mask"]]))
    # "total" leaves the entropy model out (the paper's accounting: patches are precomputed)
    per_byte = flops["flops_per_byte"]["total"]
    return {"training_flops_per_byte": 3 * per_byte, "bytes_per_patch": flops["bytes_per_patch"]}


def budget() -> dict:
    path = RUN / "budget.json"
    if path.is_file():
        return read_json(path)
    runs = run_configs()
    per_byte = {name: training_flops_per_byte(name, options) for name, options in runs.items()}
    total = BLT_ENTROPY_STEPS * BATCH * ROW * per_byte["blt-entropy"]["training_flops_per_byte"]
    plan = {name: {**values, "steps": round(total / (BATCH * ROW * values["training_flops_per_byte"]))}
            for name, values in per_byte.items()}
    result = {"training_flops": total, "bytes_per_step": BATCH * ROW, "runs": plan}
    write_json(path, result)
    log(f"budget: {json.dumps(result)}")
    return result


def stage_runs() -> None:
    plan = budget()["runs"]
    for name, options in run_configs().items():
        if name not in SELECTED_RUNS:
            continue
        steps = plan[name]["steps"]
        options.update(steps=steps, eval_steps=max(1, steps // 8))
        train("train-byte-llama" if name == "byte-llama" else "train", name, options)


def _decode_speed(model, prompt_ids, new_bytes: int = 512) -> dict:
    import torch

    with torch.no_grad():
        model.generate(prompt_ids, max_new_tokens=16, do_sample=False, eos_token_id=None)  # warm-up
        start = time.perf_counter()
        out = model.generate(prompt_ids, max_new_tokens=new_bytes, do_sample=False, eos_token_id=None,
                             min_new_tokens=new_bytes)
        seconds = time.perf_counter() - start
    text = bytes(int(i) - 4 for i in out[0, prompt_ids.shape[1] :] if int(i) >= 4).decode("utf-8", "replace")
    return {"decode_bytes_per_s": new_bytes / seconds, "continuation": text}


def stage_measure() -> None:
    import torch
    from transformers import LlamaForCausalLM

    from blt_hf import BLTForCausalLM, BLTTokenizer
    from blt_hf.evaluation.flops import llama_flops_per_token, realised_flops
    from blt_hf.evaluation.metrics import bits_per_byte
    from blt_hf.training.entry_points import TrainOptions, packed_rows

    torch.manual_seed(0)
    _, heldout = corpus_files()
    prompt_text = Path(next(f for f in heldout if "hamlet" in f)).read_text()[:4000].split("\n\n")[3][:200]
    prompt = BLTTokenizer()(prompt_text, return_tensors="pt")["input_ids"]
    for name in SELECTED_RUNS:
        path = RUN / "measure" / f"{name}.json"
        if path.is_file():
            continue
        log(f"measure {name}")
        final = RUN / name / "final"
        opts = TrainOptions(train=heldout, data_cache=str(RUN / "data"), row_length=ROW)
        if name == "byte-llama":
            model = LlamaForCausalLM.from_pretrained(final).eval()
            from blt_hf.training.baselines import ByteLlamaForCausalLM

            scorer = ByteLlamaForCausalLM.from_pretrained(final).eval()
            rows = packed_rows(heldout, opts)
            result = bits_per_byte(scorer, rows, BATCH)
            forward = llama_flops_per_token(model.config, ROW, model.config.vocab_size)
            result.update(bytes_per_patch=1.0, inference_flops_per_byte=forward,
                          inference_flops_per_byte_with_entropy_model=forward)
        else:
            model = BLTForCausalLM.from_pretrained(final).eval()
            rows = packed_rows(heldout, opts, model)
            result = bits_per_byte(model, rows, BATCH)
            lengths = torch.zeros(len(rows), max(len(r) for r in rows["patch_lengths"]), dtype=torch.long)
            for i, row in enumerate(rows["patch_lengths"]):
                lengths[i, : len(row)] = torch.tensor(row)
            flops = realised_flops(model.config, lengths, torch.tensor([sum(m) for m in rows["attention_mask"]]))
            per_byte = flops["flops_per_byte"]
            result.update(bytes_per_patch=flops["bytes_per_patch"], inference_flops_per_byte=per_byte["total"],
                          inference_flops_per_byte_with_entropy_model=per_byte["total_with_entropy_model"])
        result.update(_decode_speed(model, prompt), prompt=prompt_text, parameters=sum(
            p.numel() for p in model.parameters()))
        write_json(path, result)
        log(f"{name}: {json.dumps({k: v for k, v in result.items() if k != 'continuation'})}")


def summary() -> dict:
    plan = read_json(RUN / "budget.json") or {"training_flops": None, "runs": {}}
    runs = {}
    for name in RUN_NAMES:
        metrics, measured = read_json(RUN / name / "metrics.json"), read_json(RUN / "measure" / f"{name}.json")
        if metrics is None or measured is None or name not in plan["runs"]:
            continue
        per_byte = plan["runs"][name]["training_flops_per_byte"]
        runs[name] = {
            "steps": metrics["steps"], "training_bytes": metrics["steps"] * plan["bytes_per_step"],
            "training_flops": metrics["steps"] * plan["bytes_per_step"] * per_byte,
            "training_flops_per_byte": per_byte,
            "heldout_bits_per_byte": measured["bits_per_byte"], "heldout_bytes": measured["bytes"],
            "bytes_per_patch": measured["bytes_per_patch"],
            "inference_flops_per_byte": measured["inference_flops_per_byte"],
            "inference_flops_per_byte_with_entropy_model": measured["inference_flops_per_byte_with_entropy_model"],
            "decode_bytes_per_s": measured["decode_bytes_per_s"], "parameters": measured["parameters"],
            "history": [{"step": h["step"], "training_flops": h["step"] * plan["bytes_per_step"] * per_byte,
                         "bits_per_byte": h["bits_per_byte"]} for h in metrics["history"]],
        }
    return {"calibration": read_json(RUN / "calibration.json"), "budget_flops": plan["training_flops"],
            "entropy_model": {k: v for k, v in (read_json(RUN / "entropy" / "metrics.json") or {}).items()
                              if k in ("steps", "eval_bits_per_byte", "history")},
            "runs": runs}


def summary_table(result: dict) -> str:
    """The FLOP-matched comparison as a markdown table (summary.md; MODEL_CARD.md quotes it)."""
    lines = ["| model | steps | training FLOPs | held-out bits/byte | bytes/patch | inference FLOPs/byte "
             "(+ entropy model) | decode bytes/s | parameters |", "|---|---|---|---|---|---|---|---|"]
    for name, run in result["runs"].items():
        lines.append(
            f"| {name} | {run['steps']} | {run['training_flops']:.3g} | {run['heldout_bits_per_byte']:.4f} | "
            f"{run['bytes_per_patch']:.2f} | {run['inference_flops_per_byte'] / 1e6:.2f} M "
            f"({run['inference_flops_per_byte_with_entropy_model'] / 1e6:.2f} M) | {run['decode_bytes_per_s']:.0f} | "
            f"{run['parameters'] / 1e6:.2f} M |")
    heldout = next(iter(result["runs"].values()), {}).get("heldout_bytes")
    source = "Hamlet, The Tempest, Brown genre K, SOTU 2001-2018"
    return "\n".join(lines) + f"\n\nheld-out set: {heldout} bytes ({source})\n"


def stage_plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = summary()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, run in result["runs"].items():
        xs = [h["training_flops"] for h in run["history"]]
        ys = [h["bits_per_byte"] for h in run["history"]]
        ax.plot(xs, ys, marker="o", markersize=3, label=f"{name} ({run['bytes_per_patch']:.2f} bytes/patch)")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("held-out bits per byte (128 rows of 1024 bytes)")
    ax.set_title("FLOP-matched byte-level models on real English text")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "bpb_vs_training_flops.png", dpi=130)
    plt.close(fig)


def _heldout_sample() -> str:
    """About 6 KB of held-out text from each source (a play, fiction, a recent address) for the shipped-model test."""
    _, heldout = corpus_files()
    picks = [next(f for f in heldout if "tempest" in f), next(f for f in heldout if "brown__ck01" in f),
             next(f for f in heldout if "sotu__2010" in f)]
    return "\n\n".join(Path(f).read_text()[2000:4000].strip() for f in picks) + "\n"


def write_model_card(folder: Path) -> None:
    """MODEL_CARD.md as the folder's README.md (the Hub's model card), with its figure next to it."""
    plot = "eval/results/shipped/bpb_vs_training_flops.png"
    (folder / "README.md").write_text((REPO / "MODEL_CARD.md").read_text().replace(plot, Path(plot).name))
    if (REPO / plot).is_file():
        shutil.copyfile(REPO / plot, folder / Path(plot).name)


def remote_code_modules() -> list[str]:
    """The src/blt_hf modules a folder's remote code needs: the three auto_map entry points and what they import."""
    from transformers.dynamic_module_utils import get_relative_import_files

    package = REPO / "src" / "blt_hf"
    entries = [package / name for name in ("modeling_blt_hf.py", "configuration_blt_hf.py", "tokenization_blt_hf.py")]
    return sorted({Path(path).name for entry in entries for path in (entry, *get_relative_import_files(entry))})


def stage_card() -> None:
    """Refresh the shipped folder's model card from MODEL_CARD.md and its remote code from src/blt_hf (every module
    the remote code imports; modules it no longer imports are removed), after editing either; the weights stay."""
    write_model_card(SHIPPED)
    needed = remote_code_modules()
    for folder in remote_code_folders():
        for stale in folder.glob("*.py"):
            if stale.name not in needed:
                stale.unlink()
        for name in needed:
            shutil.copyfile(REPO / "src" / "blt_hf" / name, folder / name)
        log(f"remote code refreshed in {folder}")
    log(f"model card refreshed in {SHIPPED}")


def remote_code_folders() -> list[Path]:
    """Every folder under models/ that carries the model's code (the shipped model, byte-ified deltas)."""
    return sorted(p.parent for p in (REPO / "models").glob("*/modeling_blt_hf.py"))


def stage_ship() -> None:
    from blt_hf import BLTForCausalLM, BLTTokenizer
    from blt_hf.convert.checkpoints import write_folder_atomically
    from blt_hf.evaluation.metrics import evaluate_bits_per_byte

    SAMPLE.parent.mkdir(parents=True, exist_ok=True)
    SAMPLE.write_text(_heldout_sample())
    model = BLTForCausalLM.from_pretrained(RUN / "blt-entropy" / "final")
    measured = read_json(RUN / "measure" / "blt-entropy.json")

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        BLTTokenizer().save_pretrained(folder)
        write_model_card(folder)

    if SHIPPED.exists():
        shutil.rmtree(SHIPPED)
    write_folder_atomically(SHIPPED, write)
    sample = evaluate_bits_per_byte(str(SHIPPED), [str(SAMPLE)], row_length=ROW, batch_size=BATCH)
    write_json(SHIPPED / "training_results.json", {
        "heldout_bits_per_byte": measured["bits_per_byte"], "heldout_bytes": measured["bytes"],
        "heldout_bytes_per_patch": measured["bytes_per_patch"],
        "sample": "tests/data/heldout_sample.txt", "sample_bits_per_byte": sample["bits_per_byte"],
        "sample_bytes_per_patch": sample["bytes_per_patch"], "row_length": ROW,
    })
    log(f"shipped {SHIPPED} ({sum(p.stat().st_size for p in SHIPPED.iterdir()) / 1e6:.1f} MB); sample "
        f"{sample['bits_per_byte']:.4f} bits/byte")


def stage_byteify() -> None:
    """SmolLM2-135M byte-ified vs a from-scratch BLT of the same shape: same data, steps, batch and recipe, except
    the converted model's global transformer learns at 0.1x (the paper's recipe) and the fresh one's at 1x."""
    from blt_hf.convert.llama import convert_llama
    from eval.smollm2_conversion import llama_folder

    calibration = read_json(RUN / "calibration.json")
    converted = RUN / "byteify" / "converted"
    if not (converted / "config.json").is_file():
        source = llama_folder(Path.home() / ".cache" / "blt_hf" / "smollm2")
        convert_llama(source, converted, patcher=RUN / "entropy" / "final", cross_attn_k=2, encoder_layers=1,
                      decoder_layers=2, window=256, hash_vocab=8192, patching_mode="entropy",
                      patching_threshold=calibration["entropy_threshold"])
    common = dict(common_options(), steps=BYTEIFY_STEPS, batch_size=BYTEIFY_BATCH, warmup_steps=15,
                  eval_steps=40, max_eval_rows=32, save_steps=20)
    train("train", "byteify-smollm2", dict(common, model=str(converted), global_lr_scale=0.1,
                                           output=str(RUN / "byteify" / "smollm2")))
    train("train", "byteify-scratch", dict(common, config=str(converted / "config.json"),
                                           patcher=str(RUN / "entropy" / "final"), global_lr_scale=1.0,
                                           output=str(RUN / "byteify" / "scratch")))
    result = {"steps": BYTEIFY_STEPS, "batch": [BYTEIFY_BATCH, ROW], "heldout_rows": 32}
    for name, folder in (("smollm2_init", "smollm2"), ("from_scratch", "scratch")):
        metrics = read_json(RUN / "byteify" / folder / "metrics.json")
        result[name] = {"heldout_bits_per_byte": metrics["eval_bits_per_byte"], "history": metrics["history"],
                        "train_losses": metrics["train_losses"]}
    write_json(RESULTS / "byteify_smollm2.json", result)
    log(f"byteify: {json.dumps(result)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=STAGES, help="run just these stages (in pipeline order)")
    parser.add_argument("--runs", nargs="+", choices=RUN_NAMES, help="train and measure just these runs")
    args = parser.parse_args()
    if args.runs:
        SELECTED_RUNS[:] = args.runs
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    RESULTS.mkdir(parents=True, exist_ok=True)
    for stage in STAGES:
        if args.only and stage not in args.only:
            continue
        log(f"stage {stage}")
        globals()[f"stage_{stage}"]()
    result = summary()
    if not result["runs"]:  # nothing trained on this machine (e.g. --only card): keep the committed summary
        return
    write_json(RESULTS / "summary.json", result)
    (RESULTS / "summary.md").write_text(summary_table(result))
    print(json.dumps({name: {k: run[k] for k in ("heldout_bits_per_byte", "bytes_per_patch", "training_flops",
                                                 "decode_bytes_per_s")} for name, run in result["runs"].items()}))


if __name__ == "__main__":
    main()
