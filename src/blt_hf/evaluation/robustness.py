"""Robustness and character-level evaluation after the BLT paper: noised HellaSwag and a CUTE-like character suite.

Noise (every function is deterministic: its randomness is seeded from the text and a seed):
* `ant_speak`: upper case with a space between characters ("Cat" -> "C A T");
* `drop`: each letter removed with probability 0.1;
* `random_case`: each letter's case flipped with probability 0.5;
* `repeat`: each character repeated (1 to 3 extra copies) with probability 0.2;
* `upper_case`: all upper case.
Each is applied to the HellaSwag prompt, the completions, or both; the paper averages the three.

Character tasks (generated from real words, with three worked examples in every prompt, scored by exact match):
spelling, spelling_inverse, contains_char, insert_char, delete_char, substitute_char, orthography (the candidate
closest in spelling to a word). The words are the most frequent ones of the HellaSwag text, or a seeded sample of a
word list (`words_file`: one word per line, e.g. /usr/share/dict/words from Debian's `wamerican`).

    blt-hf robustness --model DIR --output report.md [--limit 200]     # needs eval/prepare_tasks.py's data
"""

from __future__ import annotations

import json
import random
import re
import zlib
from collections import Counter
from pathlib import Path

from ..tools.extras import require


def _rng(text: str, seed: int, salt: str) -> random.Random:
    return random.Random(zlib.crc32(f"{salt}:{seed}:{text}".encode()))


def ant_speak(text: str, seed: int = 0) -> str:
    return " ".join(text.upper())


def drop(text: str, seed: int = 0, probability: float = 0.1) -> str:
    rng = _rng(text, seed, "drop")
    return "".join(c for c in text if not (c.isalpha() and rng.random() < probability))


def random_case(text: str, seed: int = 0, probability: float = 0.5) -> str:
    rng = _rng(text, seed, "case")
    return "".join(c.swapcase() if c.isalpha() and rng.random() < probability else c for c in text)


def repeat(text: str, seed: int = 0, probability: float = 0.2) -> str:
    rng = _rng(text, seed, "repeat")
    return "".join(c * (1 + rng.randint(1, 3)) if rng.random() < probability else c for c in text)


def upper_case(text: str, seed: int = 0) -> str:
    return text.upper()


NOISES = {"ant_speak": ant_speak, "drop": drop, "random_case": random_case, "repeat": repeat, "upper_case": upper_case}
TARGETS = ("prompt", "completion", "both")


def noised(rows: list[dict], noise: str, target: str, seed: int = 0) -> list[dict]:
    """HellaSwag rows ({query, choices, gold}) with `noise` applied to the prompt, the completions or both."""
    function = NOISES[noise]
    out = []
    for row in rows:
        query, choices = row["query"], row["choices"]
        if target in ("prompt", "both"):
            query = function(query, seed)
        if target in ("completion", "both"):
            choices = [function(c, seed) for c in choices]
        out.append({"query": query, "choices": choices, "gold": row["gold"]})
    return out


# ------------------------------------------------------------------ character tasks
def words_from(texts, count: int = 400, min_length: int = 3, max_length: int = 10) -> list[str]:
    """The most frequent lower-case alphabetic words of the texts (ties broken alphabetically)."""
    counter = Counter(w for text in texts for w in re.findall(r"[a-z]+", text.lower())
                      if min_length <= len(w) <= max_length)
    return [w for w, _ in sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:count]]


def words_from_file(path: str | Path, count: int = 400, min_length: int = 3, max_length: int = 10,
                    seed: int = 0) -> list[str]:
    """A seeded sample of `count` words of a word list (one word per line), sorted; only lower-case alphabetic
    words (no proper nouns, possessives or accents), each once."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    words = sorted({w for w in (line.strip() for line in lines)
                    if re.fullmatch(r"[a-z]+", w) and min_length <= len(w) <= max_length})
    if len(words) <= count:
        return words
    return sorted(random.Random(f"words:{seed}").sample(words, count))


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _letters(rng):
    return rng.choice("abcdefghijklmnopqrstuvwxyz")


def character_example(task: str, word: str, words: list[str], rng: random.Random) -> tuple[str, str]:
    """(question, answer) of one character-task instance about `word`."""
    if task == "spelling":
        return f'Spell out the word "{word}".', " ".join(word)
    if task == "spelling_inverse":
        return f'Write "{" ".join(word)}" as a word.', word
    if task == "contains_char":
        letter = rng.choice(word) if rng.random() < 0.5 else _letters(rng)
        return f'Does "{word}" contain the letter "{letter}"?', "Yes" if letter in word else "No"
    if task == "insert_char":
        letter, position = _letters(rng), rng.randint(1, len(word) - 1)
        return (f'Add the letter "{letter}" after letter {position} of "{word}".',
                word[:position] + letter + word[position:])
    if task == "delete_char":
        position = rng.randint(1, len(word))
        return f'Delete letter {position} of "{word}".', word[: position - 1] + word[position:]
    if task == "substitute_char":
        position = rng.randint(1, len(word))
        letter = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c != word[position - 1]])  # a real change
        return (f'Replace letter {position} of "{word}" with "{letter}".',
                word[: position - 1] + letter + word[position:])
    if task == "orthography":
        others = rng.sample([w for w in words if w != word], 3)
        closest = min(others, key=lambda w: (levenshtein(word, w), others.index(w)))
        return f'Which of {", ".join(others)} is spelled most like "{word}"?', closest
    raise ValueError(f"unknown character task {task!r}")


CHARACTER_TASKS = ("spelling", "spelling_inverse", "contains_char", "insert_char", "delete_char", "substitute_char",
                   "orthography")


def character_task(task: str, words: list[str], count: int = 100, shots: int = 3, seed: int = 0) -> list[dict]:
    """`count` prompts ending in "Answer:", each with `shots` worked examples; field "answer" is the target."""
    needed = max(shots + 1, 4)  # distinct words per prompt; orthography offers 3 other words
    if len(words) < needed:
        raise ValueError(f"character tasks need at least {needed} distinct words, got {len(words)}")
    rng = random.Random(f"{task}:{seed}")
    rows = []
    for index in range(count):
        chosen = rng.sample(words, shots + 1)
        examples = [character_example(task, w, words, rng) for w in chosen]
        prompt = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in examples[:-1])
        prompt += f"Question: {examples[-1][0]}\nAnswer:"
        rows.append({"id": index, "query": prompt, "answer": " " + examples[-1][1]})
    return rows


# ------------------------------------------------------------------ the one command
_MC_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list: [{{metric: acc}}, {{metric: acc_norm}}]
metadata: {{version: 1.0}}
"""
_GEN_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs: {{until: ["\\n"], max_gen_toks: {max_gen_bytes}, do_sample: false}}
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
metadata: {{version: 1.0}}
"""


def write_suite(folder: str | Path, hellaswag: str | Path, limit: int | None = 200, seed: int = 0,
                words_file: str | Path | None = None, max_gen_bytes: int = 48) -> list[str]:
    """Task data and lm-eval YAMLs for the whole suite in `folder`; returns the task names.

    The character tasks take their words from `words_file` (one per line) when given, else from the HellaSwag text;
    answers are generated up to a newline or `max_gen_bytes` bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in Path(hellaswag).read_text().splitlines()]
    rows = rows[:limit] if limit else rows
    tasks = []

    def add(name, data, template):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
        (folder / f"{name}.yaml").write_text(
            template.format(name=name, data=folder / f"{name}.jsonl", max_gen_bytes=max_gen_bytes)
        )
        tasks.append(name)

    add("robust_hellaswag", rows, _MC_YAML)
    for noise in NOISES:
        for target in TARGETS:
            add(f"robust_hellaswag_{noise}_{target}", noised(rows, noise, target, seed), _MC_YAML)
    if words_file is not None:
        words = words_from_file(words_file, seed=seed)
    else:
        words = words_from(r["query"] + " " + " ".join(r["choices"]) for r in rows)
    for task in CHARACTER_TASKS:
        add(f"cute_{task}", character_task(task, words, count=min(limit or 100, 100), seed=seed), _GEN_YAML)
    return tasks


def suite_scores(results: dict) -> dict[str, float]:
    """The suite's headline numbers from its lm-eval results ({task: {"acc,none": ...}}): HellaSwag accuracy on the
    original rows ("hellaswag/original"), each noise averaged over prompt/completion/both ("hellaswag/<noise>") and
    over all noises ("hellaswag/noise_average"), each character task's exact match ("characters/<task>") and their
    mean ("characters/average"). Works for any lm-eval model (a BLT, a byte-level or a subword model)."""
    scores = {"hellaswag/original": results["robust_hellaswag"]["acc,none"]}
    for noise in NOISES:
        scores[f"hellaswag/{noise}"] = sum(results[f"robust_hellaswag_{noise}_{t}"]["acc,none"]
                                           for t in TARGETS) / len(TARGETS)
    scores["hellaswag/noise_average"] = sum(scores[f"hellaswag/{noise}"] for noise in NOISES) / len(NOISES)
    for task in CHARACTER_TASKS:
        scores[f"characters/{task}"] = results[f"cute_{task}"]["exact_match,none"]
    scores["characters/average"] = sum(scores[f"characters/{task}"] for task in CHARACTER_TASKS) / len(CHARACTER_TASKS)
    return scores


SCORE_LABELS = {"hellaswag/original": ("HellaSwag", "original"),
                **{f"hellaswag/{noise}": ("HellaSwag", f"{noise} (prompt / completion / both averaged)")
                   for noise in NOISES},
                "hellaswag/noise_average": ("HellaSwag", "noise average"),
                **{f"characters/{task}": ("characters", task) for task in CHARACTER_TASKS},
                "characters/average": ("characters", "average")}


def markdown_report(results: dict) -> str:
    """The suite's lm-eval results as a markdown table (HellaSwag noise averaged over prompt/completion/both)."""
    lines = ["| suite | task | accuracy |", "|---|---|---|"]
    for key, value in suite_scores(results).items():
        suite, task = SCORE_LABELS[key]
        lines.append(f"| {suite} | {task} | {value:.3f} |")
    return "\n".join(lines) + "\n"


def run_suite(model_dir: str, output: str, hellaswag: str = "data/tasks/hellaswag.jsonl", limit: int | None = 200,
              batch_size: int = 8, work_dir: str | None = None, words_file: str | None = None,
              results_json: str | None = None, max_gen_bytes: int = 48) -> str:
    """Run both suites through lm-eval with the `blt_hf` backend; write and return the markdown table.

    words_file: word list for the character tasks (default: words of the HellaSwag text). results_json: also write
    every task's lm-eval metrics there ({task: {metric: value}}). max_gen_bytes: longest generated answer."""
    import tempfile

    require("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from .lm_eval_adapter import BLTLM

    if not Path(hellaswag).is_file():
        raise ValueError(f"{hellaswag} not found: run python eval/prepare_tasks.py first")
    if words_file is not None and not Path(words_file).is_file():
        raise ValueError(f"{words_file} not found (e.g. apt-get install wamerican for /usr/share/dict/words)")
    folder = Path(work_dir or tempfile.mkdtemp(prefix="blt_robustness_"))
    tasks = write_suite(folder, hellaswag, limit, words_file=words_file, max_gen_bytes=max_gen_bytes)
    model = BLTLM(pretrained=model_dir, max_batch_bytes=batch_size * 1024)
    manager = TaskManager(include_path=str(folder), include_defaults=False)  # the suite needs no built-in task
    results = simple_evaluate(model=model, tasks=tasks, task_manager=manager)
    report = markdown_report(results["results"])
    Path(output).write_text(report)
    if results_json is not None:
        scores = {task: results["results"][task] for task in tasks}
        Path(results_json).write_text(json.dumps(scores, indent=1, default=str) + "\n")
    return report
