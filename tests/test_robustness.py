"""Noise functions and character tasks: deterministic, and doing what their names say."""

import json
import random
from pathlib import Path

import pytest
import yaml

from blt_hf.robustness import (
    CHARACTER_TASKS,
    NOISES,
    TARGETS,
    ant_speak,
    character_example,
    character_task,
    drop,
    levenshtein,
    markdown_report,
    noised,
    random_case,
    repeat,
    upper_case,
    words_from,
    write_suite,
)

TEXT = "The quick brown fox, 42 times, jumps over the lazy dog."


def is_subsequence(short, long):
    it = iter(long)
    return all(c in it for c in short)


@pytest.mark.parametrize("noise", sorted(NOISES))
def test_noise_is_deterministic_and_seeded(noise):
    function = NOISES[noise]
    assert function(TEXT, 3) == function(TEXT, 3)
    if noise in ("drop", "random_case", "repeat"):
        assert len({function(TEXT * 3, seed) for seed in range(5)}) > 1


def test_noise_functions_do_what_their_names_say():
    assert upper_case(TEXT) == TEXT.upper()
    assert ant_speak("Cat") == "C A T" and ant_speak(TEXT)[::2] == TEXT.upper()
    dropped = drop(TEXT * 5)
    assert is_subsequence(dropped, TEXT * 5) and len(dropped) < len(TEXT * 5)
    assert sum(not c.isalpha() for c in dropped) == sum(not c.isalpha() for c in TEXT * 5)  # only letters dropped
    flipped = random_case(TEXT * 5)
    assert flipped.lower() == (TEXT * 5).lower() and flipped != TEXT * 5
    repeated = repeat(TEXT * 5)
    assert is_subsequence(TEXT * 5, repeated) and len(repeated) > len(TEXT * 5)
    assert "".join(c for i, c in enumerate(repeated) if i == 0 or c != repeated[i - 1]) == \
        "".join(c for i, c in enumerate(TEXT * 5) if i == 0 or c != (TEXT * 5)[i - 1])


def test_noise_targets_prompt_completion_or_both():
    rows = [{"query": "A man walks.", "choices": ["he runs", "he sits"], "gold": 1}]
    assert noised(rows, "upper_case", "prompt")[0] == {"query": "A MAN WALKS.", "choices": ["he runs", "he sits"],
                                                       "gold": 1}
    assert noised(rows, "upper_case", "completion")[0]["choices"] == ["HE RUNS", "HE SITS"]
    assert noised(rows, "upper_case", "both")[0] == {"query": "A MAN WALKS.", "choices": ["HE RUNS", "HE SITS"],
                                                     "gold": 1}


WORDS = ["apple", "banana", "cherry", "dragon", "eagle", "falcon", "garden", "harbor", "island", "jungle"]


@pytest.mark.parametrize("task", CHARACTER_TASKS)
def test_character_tasks_are_deterministic_with_worked_examples(task):
    rows = character_task(task, WORDS, count=5, seed=1)
    assert rows == character_task(task, WORDS, count=5, seed=1)
    assert rows != character_task(task, WORDS, count=5, seed=2)
    for row in rows:
        assert row["query"].count("Question:") == 4 and row["query"].endswith("Answer:")
        assert row["answer"].startswith(" ")


def test_character_answers_are_right():
    rng = random.Random(0)
    for _ in range(50):
        word = rng.choice(WORDS)
        question, answer = character_example("spelling", word, WORDS, rng)
        assert answer == " ".join(word) and word in question
        question, answer = character_example("spelling_inverse", word, WORDS, rng)
        assert answer == word and " ".join(word) in question
        question, answer = character_example("contains_char", word, WORDS, rng)
        letter = question.split('letter "')[1][0]
        assert answer == ("Yes" if letter in word else "No")
        question, answer = character_example("insert_char", word, WORDS, rng)
        assert len(answer) == len(word) + 1 and is_subsequence(word, answer)
        question, answer = character_example("delete_char", word, WORDS, rng)
        assert len(answer) == len(word) - 1 and is_subsequence(answer, word)
        question, answer = character_example("substitute_char", word, WORDS, rng)
        assert len(answer) == len(word) and sum(a != b for a, b in zip(answer, word, strict=True)) <= 1
        question, answer = character_example("orthography", word, WORDS, rng)
        candidates = question.split("Which of ")[1].split(" is spelled")[0].split(", ")
        assert levenshtein(word, answer) == min(levenshtein(word, c) for c in candidates)
    assert levenshtein("kitten", "sitting") == 3


def test_suite_files_and_report(tmp_path):
    hellaswag = tmp_path / "hellaswag.jsonl"
    rows = [{"query": f"Activity {i}: A person starts to dance", "choices": ["and smiles.", "then falls asleep."],
             "gold": 0} for i in range(4)]
    hellaswag.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = write_suite(tmp_path / "suite", hellaswag, limit=3)
    assert len(tasks) == 1 + len(NOISES) * len(TARGETS) + len(CHARACTER_TASKS)
    config = yaml.safe_load((tmp_path / "suite" / "robust_hellaswag_drop_both.yaml").read_text())
    data_file = Path(config["dataset_kwargs"]["data_files"]["validation"])
    data = [json.loads(line) for line in data_file.read_text().splitlines()]
    assert data == noised(rows[:3], "drop", "both")
    fake = {task: {"acc,none": 0.5, "exact_match,none": 0.25} for task in tasks}
    report = markdown_report(fake)
    assert "| HellaSwag | noise average | 0.500 |" in report and "| characters | average | 0.250 |" in report
    assert words_from(["The the THE cat cat dog"], count=2) == ["the", "cat"]
