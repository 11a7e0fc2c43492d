"""The shipped model and its FLOP-matched baselines on the offline benchmark tasks and the robustness suites.

Every model of scripts/train_shipped_model.py (runs/shipped/*/final) goes through lm-eval-harness on HellaSwag,
PIQA, ARC-Easy, ARC-Challenge and LAMBADA (eval/tasks/, data from eval/prepare_tasks.py), the BLTs with the
`blt_hf` backend and the byte-level Llama with the stock `hf` backend (reading bytes with the BLT tokenizer); then
the noised-HellaSwag and character suites (blt_hf.evaluation.robustness) for the shipped BLT and the byte-level Llama.

    python eval/prepare_tasks.py && python eval/eval_shipped_model.py [--limit 500] [--robustness-limit 200]

Writes eval/results/shipped/tasks.json and tasks.md; prints the tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RUN = REPO / "runs" / "shipped"
SHIPPED = REPO / "models" / "blt-hf-small-en"
OUT = REPO / "eval" / "results" / "shipped"
TASKS = ["blt_hellaswag", "blt_piqa", "blt_arc_easy", "blt_arc_challenge", "blt_lambada"]
MODELS = {"blt-entropy": SHIPPED, "blt-space": RUN / "blt-space" / "final", "blt-static": RUN / "blt-static" / "final",
          "byte-llama": RUN / "byte-llama" / "final"}


def harness_model(name: str, folder: Path):
    """lm-eval model objects: the blt_hf backend for BLTs, the stock hf backend for the byte-level Llama."""
    from lm_eval.models.huggingface import HFLM

    from blt_hf.evaluation.lm_eval_adapter import BLTLM

    if name == "byte-llama":
        return HFLM(pretrained=str(folder), tokenizer=str(SHIPPED), trust_remote_code=True, batch_size=8, device="cpu",
                    max_length=1024)
    return BLTLM(pretrained=str(folder), max_batch_bytes=8 * 1024)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=500, help="documents per task")
    parser.add_argument("--robustness-limit", type=int, default=200, help="HellaSwag documents in the noise suite")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from blt_hf.evaluation.robustness import markdown_report, write_suite

    torch.set_num_threads(args.threads)
    if not (REPO / "data" / "tasks" / "hellaswag.jsonl").is_file():
        subprocess.run([sys.executable, str(REPO / "eval" / "prepare_tasks.py")], check=True, cwd=REPO)
    results = {"limit": args.limit, "robustness_limit": args.robustness_limit, "tasks": {}, "robustness": {}}
    suite = write_suite(RUN / "robustness_tasks", REPO / "data" / "tasks" / "hellaswag.jsonl", args.robustness_limit)
    for name, folder in MODELS.items():
        if not (folder / "config.json").is_file():
            continue
        model = harness_model(name, folder)
        scores = simple_evaluate(model=model, tasks=TASKS, limit=args.limit,
                                 task_manager=TaskManager(include_path=str(REPO / "eval" / "tasks"),
                                                          include_defaults=False))["results"]
        results["tasks"][name] = {task: {k.split(",")[0]: v for k, v in scores[task].items()
                                         if isinstance(v, float) and "stderr" not in k} for task in TASKS}
        if name in ("blt-entropy", "byte-llama"):
            tasks = TaskManager(include_path=str(RUN / "robustness_tasks"), include_defaults=False)
            noisy = simple_evaluate(model=model, tasks=suite, task_manager=tasks)
            results["robustness"][name] = markdown_report(noisy["results"])
        print(name, json.dumps(results["tasks"][name]), flush=True)

    header = "| model | " + " | ".join(t.removeprefix("blt_") for t in TASKS) + " |"
    lines = ["acc (acc_norm for hellaswag, arc) on the first documents of each task", "", header,
             "|---" * (len(TASKS) + 1) + "|"]
    for name, tasks in results["tasks"].items():
        cells = [tasks[t]["acc_norm"] if "acc_norm" in tasks[t] else tasks[t]["acc"] for t in TASKS]
        lines.append(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    for name, table in results["robustness"].items():
        lines += ["", f"robustness and character suites: {name}", "", table]
    (OUT / "tasks.md").write_text("\n".join(lines) + "\n")
    (OUT / "tasks.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))
    print(json.dumps({"benchmark": "shipped_model_tasks", **{n: {t: v.get("acc_norm", v.get("acc"))
                                                                for t, v in r.items()}
                                                            for n, r in results["tasks"].items()}}))


if __name__ == "__main__":
    main()
