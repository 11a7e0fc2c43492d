"""Noise functions and character tasks: deterministic, and doing what their names say; the suite end to end."""

import itertools
import json
import random
import re
from pathlib import Path

import pytest
import yaml

from blt_hf.evaluation.robustness import (
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
    run_suite,
    suite_scores,
    upper_case,
    words_from,
    words_from_file,
    write_suite,
)
from tests.utils import tiny_model

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


def assert_edit_is_right(task: str, question: str, answer: str):
    """The answer is the word with exactly the edit the question states (1-based letter positions)."""
    if task == "insert_char":
        letter, position, word = re.fullmatch(r'Add the letter "([a-z])" after letter (\d+) of "([a-z]+)"\.',
                                              question).groups()
        position = int(position)
        assert 1 <= position < len(word)
        assert answer[position] == letter  # the stated letter right after the first `position` letters
        assert answer[:position] + answer[position + 1:] == word  # and nothing else changed
    elif task == "delete_char":
        position, word = re.fullmatch(r'Delete letter (\d+) of "([a-z]+)"\.', question).groups()
        position = int(position)
        assert 1 <= position <= len(word) and len(answer) == len(word) - 1
        assert answer[: position - 1] == word[: position - 1] and answer[position - 1:] == word[position:]
    elif task == "substitute_char":
        position, word, letter = re.fullmatch(r'Replace letter (\d+) of "([a-z]+)" with "([a-z])"\.',
                                              question).groups()
        position = int(position)
        assert len(answer) == len(word)
        assert [i for i, (a, b) in enumerate(zip(word, answer, strict=True)) if a != b] == [position - 1]
        assert answer[position - 1] == letter != word[position - 1]  # exactly one change, to the stated letter
    else:
        raise AssertionError(task)


@pytest.mark.parametrize("task", ["insert_char", "delete_char", "substitute_char"])
def test_edit_tasks_state_the_edit_their_answers_make(task):
    rng = random.Random(1)
    for _ in range(600):  # a zero-change substitution would turn up with probability ~1/26 each
        word = rng.choice(WORDS)
        assert_edit_is_right(task, *character_example(task, word, WORDS, rng))
    for row in character_task(task, WORDS, count=20, seed=3):  # the worked examples and the asked question
        pairs = re.findall(r"Question: (.*)\nAnswer: (.*)\n", row["query"] + row["answer"] + "\n")
        assert len(pairs) == 4
        for question, answer in pairs:
            assert_edit_is_right(task, question, answer)


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
        for task in ("insert_char", "delete_char", "substitute_char"):
            question, answer = character_example(task, word, WORDS, rng)
            assert_edit_is_right(task, question, answer)
            assert f'"{word}"' in question
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



def test_suite_scores_average_the_noises_and_the_character_tasks():
    tasks = ["robust_hellaswag"] + [f"robust_hellaswag_{n}_{t}" for n in NOISES for t in TARGETS]
    results = {task: {"acc,none": 0.1 * (i % 7), "acc_norm,none": 1.0} for i, task in enumerate(tasks)}
    results.update({f"cute_{task}": {"exact_match,none": 0.05 * i} for i, task in enumerate(CHARACTER_TASKS)})
    scores = suite_scores(results)
    assert scores["hellaswag/original"] == 0.0  # acc, not acc_norm
    noise_means = []
    for noise in NOISES:
        mean = sum(results[f"robust_hellaswag_{noise}_{t}"]["acc,none"] for t in TARGETS) / 3
        assert scores[f"hellaswag/{noise}"] == pytest.approx(mean)
        noise_means.append(mean)
    assert scores["hellaswag/noise_average"] == pytest.approx(sum(noise_means) / len(NOISES))
    assert scores["characters/average"] == pytest.approx(0.05 * sum(range(len(CHARACTER_TASKS))) / len(CHARACTER_TASKS))
    assert len(scores) == 1 + len(NOISES) + 1 + len(CHARACTER_TASKS) + 1
    report = markdown_report(results)  # the table lists exactly these numbers, in this order
    assert [float(line.split("|")[3]) for line in report.splitlines()[2:]] == [round(v, 3) for v in scores.values()]

def test_words_from_a_word_list(tmp_path):
    listing = tmp_path / "words"
    listing.write_text("apple\nApple\nbanana\ncat's\ncaf\u00e9\nox\n  kiwi \n\nbanana\nzebra\nextraordinary\n")
    # lower-case alphabetic, 3 to 10 letters, each once: no proper noun, possessive, accent, short or long word
    assert words_from_file(listing) == ["apple", "banana", "kiwi", "zebra"]
    many = ["".join(letters) for letters in itertools.product("abcde", repeat=3)]
    listing.write_text("\n".join(many) + "\n")
    sample = words_from_file(listing, count=20, seed=1)
    assert len(set(sample)) == 20 and set(sample) <= set(many) and sample == sorted(sample)
    assert sample == words_from_file(listing, count=20, seed=1) != words_from_file(listing, count=20, seed=2)


def hellaswag_file(folder: Path, count: int = 4) -> Path:
    rows = [{"query": f"Activity {i}: A person starts to dance", "choices": [" and smiles.", " then falls asleep."],
             "gold": i % 2} for i in range(count)]
    path = folder / "hellaswag.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


LISTED = ["quartz", "rhythm", "sphinx", "jigsaw", "oxygen", "walrus", "voodoo", "kayak"]


def asked_words(suite: Path) -> set:
    """Words the character prompts ask about, read back from the spelling and orthography task files."""
    asked = set()
    for name in ("cute_spelling", "cute_orthography"):
        for line in (suite / f"{name}.jsonl").read_text().splitlines():
            query = json.loads(line)["query"]
            asked |= set(re.findall(r'Spell out the word "([a-z]+)"', query))
            for candidates, word in re.findall(r"Which of (.*) is spelled most like \"([a-z]+)\"", query):
                asked |= {word, *candidates.split(", ")}
    return asked


def test_suite_takes_character_words_from_a_word_file(tmp_path):
    hellaswag = hellaswag_file(tmp_path)
    listing = tmp_path / "words"
    listing.write_text("\n".join(LISTED + ["Proper", "it's"]) + "\n")
    write_suite(tmp_path / "listed", hellaswag, limit=3, words_file=listing)
    assert asked_words(tmp_path / "listed") <= set(LISTED) and len(asked_words(tmp_path / "listed")) > 4
    write_suite(tmp_path / "text", hellaswag, limit=3)  # the default: words of the HellaSwag text
    text_words = set(re.findall(r"[a-z]+", (hellaswag.read_text()).lower()))
    assert asked_words(tmp_path / "text") <= text_words and not asked_words(tmp_path / "text") & set(LISTED)
    listing.write_text("quartz\nrhythm\nsphinx\n")
    with pytest.raises(ValueError, match="at least 4 distinct words"):
        write_suite(tmp_path / "short", hellaswag, limit=3, words_file=listing)


def test_run_suite_end_to_end_on_a_tiny_model(tmp_path):
    from blt_hf import BLTTokenizer

    model_dir = tmp_path / "model"
    tiny_model(seed=5, patching_mode="static", has_patcher=False).save_pretrained(model_dir)  # fast to generate
    BLTTokenizer().save_pretrained(model_dir)
    listing = tmp_path / "words"
    listing.write_text("\n".join(LISTED) + "\n")
    output, scores_file = tmp_path / "report.md", tmp_path / "scores.json"
    report = run_suite(str(model_dir), str(output), str(hellaswag_file(tmp_path)), limit=2,
                       work_dir=str(tmp_path / "suite"), words_file=str(listing), results_json=str(scores_file),
                       max_gen_bytes=16)  # the longest answer, a spelled 6-letter word, is 12 bytes
    assert output.read_text() == report
    scores = json.loads(scores_file.read_text())
    multiple_choice = ["robust_hellaswag"] + [f"robust_hellaswag_{n}_{t}" for n in NOISES for t in TARGETS]
    character = [f"cute_{task}" for task in CHARACTER_TASKS]
    assert sorted(scores) == sorted(multiple_choice + character)
    for task in multiple_choice:
        assert scores[task]["sample_len"] == 2
        assert 0 <= scores[task]["acc,none"] <= 1 and 0 <= scores[task]["acc_norm,none"] <= 1
    for task in character:
        assert scores[task]["sample_len"] == 2 and 0 <= scores[task]["exact_match,none"] <= 1
    assert asked_words(tmp_path / "suite") <= set(LISTED)
    generation = yaml.safe_load((tmp_path / "suite" / "cute_spelling.yaml").read_text())["generation_kwargs"]
    assert generation == {"until": ["\n"], "max_gen_toks": 16, "do_sample": False}
    table = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): float(line.split("|")[3])
             for line in report.splitlines()[2:]}
    assert table[("HellaSwag", "original")] == pytest.approx(scores["robust_hellaswag"]["acc,none"], abs=5e-4)
    for noise in NOISES:
        mean = sum(scores[f"robust_hellaswag_{noise}_{t}"]["acc,none"] for t in TARGETS) / len(TARGETS)
        assert table[("HellaSwag", f"{noise} (prompt / completion / both averaged)")] == pytest.approx(mean, abs=5e-4)
    for task in CHARACTER_TASKS:
        assert table[("characters", task)] == pytest.approx(scores[f"cute_{task}"]["exact_match,none"], abs=5e-4)
    assert len(table) == 1 + len(NOISES) + 1 + len(CHARACTER_TASKS) + 1  # plus the two averages
    assert all(0 <= value <= 1 for value in table.values())
