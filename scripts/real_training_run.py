"""A real, minutes-long training run: a small entropy model, then a small BLT patched by it, on real English text.

Uses the corpus of scripts/prepare_corpus.py (Shakespeare, Brown, State of the Union, Moby Dick; held out by play,
genre and year) and the `blt-hf train-entropy` / `blt-hf train` entry points. Writes the runs to runs/real/ and
a summary with held-out bits per byte to eval/results/real_training.json.

    python scripts/real_training_run.py [--entropy-steps 300] [--blt-steps 300]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(command: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="data/corpus")
    parser.add_argument("--out", default="runs/real")
    parser.add_argument("--entropy-steps", type=int, default=300)
    parser.add_argument("--blt-steps", type=int, default=300)
    args = parser.parse_args()

    subprocess.run([sys.executable, "scripts/prepare_corpus.py", "--out", args.corpus], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    corpus = REPO / args.corpus
    train = sorted(str(p) for p in (corpus / "train").glob("*.txt"))
    heldout = sorted(str(p) for p in (corpus / "heldout").glob("*.txt"))
    out = REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    results = REPO / "eval" / "results"
    common = ["--train", *train, "--eval", *heldout, "--preset", "small", "--row-length", "1024",
              "--batch-size", "8", "--logging-steps", "25", "--warmup-steps", "30", "--max-eval-rows", "128",
              "--seed", "0"]
    entropy_s = run([sys.executable, "-m", "blt_hf.cli", "train-entropy", *common, "--steps", str(args.entropy_steps),
                     "--learning-rate", "2e-3", "--eval-steps", "100", "--save-steps", "100",
                     "--output", str(out / "entropy")], results / "real_training_entropy.log")
    blt_s = run([sys.executable, "-m", "blt_hf.cli", "train", *common, "--steps", str(args.blt_steps),
                 "--learning-rate", "1e-3", "--eval-steps", "100", "--save-steps", "100",
                 "--patcher", str(out / "entropy" / "final"), "--output", str(out / "blt")],
                results / "real_training_blt.log")
    entropy = json.loads((out / "entropy" / "metrics.json").read_text())
    blt = json.loads((out / "blt" / "metrics.json").read_text())
    summary = {
        "corpus": json.loads((corpus / "manifest.json").read_text())["stats"],
        "entropy_model": {
            "steps": entropy["steps"], "minutes": round(entropy_s / 60, 1),
            "heldout_bits_per_byte": entropy["eval_bits_per_byte"], "heldout_bytes": entropy["eval_bytes"],
        },
        "blt": {"steps": blt["steps"], "minutes": round(blt_s / 60, 1),
                "heldout_bits_per_byte": blt["eval_bits_per_byte"], "heldout_bytes": blt["eval_bytes"]},
        "uniform_baseline_bits_per_byte": 8.0,
    }
    (results / "real_training.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
