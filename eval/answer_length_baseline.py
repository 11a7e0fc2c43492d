"""Accuracy of always picking the longest (or shortest) answer on the offline multiple-choice tasks.

A reference point for acc_norm: length normalisation pushes a weak model towards long answers, so its acc_norm
sits near the longest-answer score, which can be below chance.

    python eval/answer_length_baseline.py [--limit 200] [--tasks data/tasks]    # last line: one JSON line
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TASKS = ("hellaswag", "piqa", "arc_easy", "arc_challenge")


def length_baselines(rows: list[dict]) -> dict:
    """Accuracy of the longest and of the shortest answer (UTF-8 bytes, first one on ties)."""
    def accuracy(pick):
        return sum(pick(range(len(r["choices"])), key=lambda i: len(r["choices"][i].encode())) == r["gold"]
                   for r in rows) / len(rows)

    return {"documents": len(rows), "longest": accuracy(max), "shortest": accuracy(min),
            "chance": sum(1 / len(r["choices"]) for r in rows) / len(rows)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=200, help="first documents of each task (as lm-eval --limit)")
    parser.add_argument("--tasks", default="data/tasks", help="folder written by eval/prepare_tasks.py")
    args = parser.parse_args()
    result = {}
    for name in TASKS:
        lines = Path(args.tasks, f"{name}.jsonl").read_text().splitlines()[: args.limit]
        result[name] = length_baselines([json.loads(line) for line in lines])
        print(f"{name:14} longest {result[name]['longest']:.3f}  shortest {result[name]['shortest']:.3f}  "
              f"chance {result[name]['chance']:.3f}")
    print(json.dumps({"benchmark": "answer_length_baseline", "limit": args.limit, **result}))


if __name__ == "__main__":
    main()
