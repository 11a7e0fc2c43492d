"""Two runs of eval/eval_byteified.py side by side: one model's task accuracies in each, their difference and its
paired standard error over the same documents (e.g. the byte-ified model before and after stage 2).

Each run is one or more OUT/partial.json files (a run split over processes); they are joined as merge_partials does.

    python eval/compare_task_runs.py --before eval/results/byteify/tasks_n300/partial.json \
        eval/results/byteify/tasks_n300_b/partial.json --after eval/results/byteify/tasks_n300_stage2/partial.json
    # another run's byte-ified model against SmolLM2 on the same documents:
    python eval/compare_task_runs.py --before-model smollm2 \
        --before eval/results/byteify/tasks_n300_stage2/partial.json \
        --after eval/results/byteify/tasks_n300_soup05/partial.json

Prints a markdown table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_byteified import HEADLINE, paired_standard_error  # noqa: E402


def joined(paths: list[Path], model: str) -> dict:
    """The tasks' per-document scores of `model` over the given partial.json files (the first file's win)."""
    scores = {}
    for path in paths:
        saved = json.loads(path.read_text())["models"].get(model, {})
        for task, values in saved.get("per_document", {}).items():
            scores.setdefault(task, values)
    return scores


def compare(before: dict, after: dict) -> dict:
    """{task: {before, after, difference, paired_se, n}} for the tasks both runs scored on the same documents."""
    rows = {}
    for task in HEADLINE:
        if task not in before or task not in after:
            continue
        a, b = before[task], after[task]
        if len(a) != len(b):
            raise ValueError(f"{task}: {len(a)} documents before, {len(b)} after: not the same documents")
        mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
        rows[task] = {"before": round(mean_a, 4), "after": round(mean_b, 4), "difference": round(mean_b - mean_a, 4),
                      "paired_se": round(paired_standard_error(a, b), 4), "n": len(a)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, nargs="+", required=True)
    parser.add_argument("--after", type=Path, nargs="+", required=True)
    parser.add_argument("--model", default="byteified")
    parser.add_argument("--before-model", help="the model read from --before (default: --model), e.g. smollm2 to "
                                               "set another run's byte-ified model against SmolLM2")
    args = parser.parse_args()
    before_model = args.before_model or args.model
    rows = compare(joined(args.before, before_model), joined(args.after, args.model))
    print("| task | metric | n | before | after | after − before ± paired SE |")
    print("|---|---|---|---|---|---|")
    for task, row in rows.items():
        name = task.removeprefix("blt_")
        print(f"| {name} | {HEADLINE[task]} | {row['n']} | {row['before']:.3f} | {row['after']:.3f} "
              f"| {row['difference']:+.3f} ± {row['paired_se']:.3f} |")
    print(json.dumps({"benchmark": "compare_task_runs", "before_model": before_model, "model": args.model,
                      "tasks": rows}))


if __name__ == "__main__":
    main()
