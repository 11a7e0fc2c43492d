"""Evaluation tools: `blt-hf eval-bpb`, the `evaluate` metric, the offline lm-eval tasks in eval/tasks, the task
conversion of eval/prepare_tasks.py and `make bench` (eval/run_benchmarks.py)."""

import glob
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blt_hf import BLTForCausalLM, BLTTokenizer
from blt_hf.tools.cli import main
from tests.utils import tiny_model

REPO = Path(__file__).resolve().parents[1]
FIRST_FILE = "Bytes are all you need. " * 5 + "Café crème, 5 € — naïve façade. 🙂 The end.\n"
SECOND_FILE = "A short second document.\n\nIts second paragraph, with ü and ß.\n"


def _offline_env(home):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(home))
    return env


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_tools")
    tiny_model(seed=13, patching_threshold=5.1).save_pretrained(folder / "model")
    BLTTokenizer().save_pretrained(folder / "model")
    (folder / "first.txt").write_text(FIRST_FILE, encoding="utf-8")
    (folder / "second.txt").write_text(SECOND_FILE, encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------------------------------- bits per byte


def _pieces(documents, row_length):
    """The packing convention of blt_hf.training.data: each document is BOS + its bytes, rows of `row_length` ids are
    filled
    greedily, and a document longer than the room left continues in the next row behind a fresh BOS."""
    room = row_length
    for data in documents:
        while data:
            if room < 2:
                room = row_length
            piece, data = data[: room - 1], data[room - 1 :]
            room -= len(piece) + 1
            yield piece


def _direct_bits_per_byte(model, documents, row_length):
    """Each piece on its own (BOS + bytes), every byte after the BOS scored: summed -log p / bytes / ln 2."""
    nats, count = 0.0, 0
    for piece in _pieces(documents, row_length):
        ids = [1] + [b + 4 for b in piece]
        with torch.no_grad():
            logprobs = model(torch.tensor([ids]), use_cache=False).logits.log_softmax(-1)[0]
        nats -= sum(logprobs[i - 1, ids[i]].item() for i in range(1, len(ids)))
        count += len(piece)
    return nats / count / math.log(2), count


@pytest.mark.parametrize("split_paragraphs", [False, True])
def test_eval_bpb_equals_a_direct_computation_and_reports_flops(checkpoint, capsys, split_paragraphs):
    files = [str(checkpoint / "first.txt"), str(checkpoint / "second.txt")]
    row_length = 64  # the first file needs three rows
    argv = ["eval-bpb", *files, "--model", str(checkpoint / "model"), "--row-length", str(row_length),
            "--batch-size", "3"]
    assert main(argv + (["--split-paragraphs"] if split_paragraphs else [])) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])

    texts = [Path(f).read_bytes() for f in files]
    if split_paragraphs:
        texts = [p.strip() for t in texts for p in t.split(b"\n\n") if p.strip()]
    model = BLTForCausalLM.from_pretrained(checkpoint / "model").eval()
    direct, count = _direct_bits_per_byte(model, texts, row_length)
    assert result["bytes"] == count == sum(len(t) for t in texts)
    assert result["bits_per_byte"] == pytest.approx(direct, rel=1e-5)
    assert result["nats_per_byte"] == pytest.approx(direct * math.log(2), rel=1e-5)
    assert result["files"] == 2
    assert result["bytes_per_patch"] >= 1
    flops = result["forward_flops_per_byte"]
    assert flops["total"] > 0 and flops["total_with_entropy_model"] > flops["total"]
    assert all(value >= 0 for value in flops.values())
    assert result["llama_same_layers_forward_flops_per_byte"] > 0


def test_evaluate_metric_equals_a_direct_computation(checkpoint):
    texts = [FIRST_FILE, SECOND_FILE, "é"]
    script = (
        "import json, sys, evaluate\n"
        "metric = evaluate.load(sys.argv[1])\n"
        "print(json.dumps(metric.compute(predictions=json.loads(sys.argv[2]), model_id=sys.argv[3], "
        "batch_size=2, row_length=48)))\n"
    )
    metric_folder = REPO / "eval" / "metrics" / "blt_bits_per_byte"
    run = subprocess.run([sys.executable, "-c", script, str(metric_folder), json.dumps(texts),
                          str(checkpoint / "model")], env=_offline_env(checkpoint / "hf_home"), cwd=checkpoint,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    model = BLTForCausalLM.from_pretrained(checkpoint / "model").eval()
    direct, count = _direct_bits_per_byte(model, [t.encode() for t in texts], 48)
    assert result["bytes"] == count
    assert result["bits_per_byte"] == pytest.approx(direct, rel=1e-5)


# ------------------------------------------------------------------------------------------ eval/tasks/utils.py


def _task_utils():
    spec = importlib.util.spec_from_file_location("blt_task_utils", REPO / "eval" / "tasks" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# scored as " " + choice: " abcdef" 7 chars / 7 bytes, " é€" 3 chars / 6 bytes, " a" 2 chars / 2 bytes
CHOICES = ["abcdef", "é€", "a"]
LOGLIKELIHOODS = [-7.0, -4.5, -2.5]  # per char -1.0, -1.5, -1.25; per byte -1.0, -0.75, -1.25


@pytest.mark.parametrize("gold, acc, acc_norm, acc_bytes", [(0, 0, 1, 0), (1, 0, 0, 1), (2, 1, 0, 0)])
def test_multiple_choice_metrics_normalise_by_characters_and_by_bytes(gold, acc, acc_norm, acc_bytes):
    utils = _task_utils()
    results = [(ll, False) for ll in LOGLIKELIHOODS]
    metrics = utils.process_multiple_choice({"choices": CHOICES, "gold": gold}, results)
    assert (metrics["acc"], metrics["acc_norm"], metrics["acc_bytes"]) == (acc, acc_norm, acc_bytes)
    assert metrics["bits_per_byte"] == (LOGLIKELIHOODS[gold], [7, 6, 2][gold])


def test_lambada_metrics_and_bits_per_byte_aggregation():
    utils = _task_utils()
    assert utils.process_lambada({"context": "x", "continuation": " café"}, [(-3.0, True)]) == {
        "acc": 1.0, "bits_per_byte": (-3.0, 6)}
    assert utils.process_lambada({"context": "x", "continuation": " tea"}, [(-1.5, False)])["acc"] == 0.0
    assert utils.bits_per_byte([(-3.0, 6), (-1.5, 4)]) == pytest.approx(4.5 / 10 / math.log(2))


# -------------------------------------------------------------------------------- the five task YAMLs in lm-eval

MC_TASKS = {
    "hellaswag": [
        {"query": "Baking: She mixes the flour and", "choices": ["water.", "sings to the moon.", "crème brûlée.",
                                                              "€"], "gold": 2},
        {"query": "Running: A man laces his shoes. He", "choices": ["runs.", "eats the shoes.", "naps", "flies"],
         "gold": 0},
        {"query": "Music: The band", "choices": ["plays.", "évaporé", "a", "is quiet now"], "gold": 3},
        {"query": "Never scored", "choices": ["a", "b", "c", "d"], "gold": 1},
    ],
    "piqa": [
        {"query": "Question: How do you open a jar?\nAnswer:", "choices": ["Twist the lid.", "Ask it."], "gold": 0},
        {"query": "Question: How to cool tea?\nAnswer:", "choices": ["Wait.", "Heat it more, très fort."],
         "gold": 1},
        {"query": "Question: Dry wet socks?\nAnswer:", "choices": ["Hang them up.", "Soak them."], "gold": 0},
        {"query": "Question: Never scored?\nAnswer:", "choices": ["x", "y"], "gold": 1},
    ],
    "arc_easy": [
        {"query": "Question: What is ice?\nAnswer:", "choices": ["frozen water", "hot air", "rock"], "gold": 0},
        {"query": "Question: Which is a planet?\nAnswer:", "choices": ["Mars", "the Sun", "Moon", "Ünus"],
         "gold": 0},
        {"query": "Question: Plants need?\nAnswer:", "choices": ["light", "noise", "silence", "plastic"],
         "gold": 0},
        {"query": "Question: Never scored?\nAnswer:", "choices": ["x", "y"], "gold": 0},
    ],
    "arc_challenge": [
        {"query": "Question: What conducts electricity best?\nAnswer:", "choices": ["copper", "wood", "glass"],
         "gold": 0},
        {"query": "Question: Speed of light?\nAnswer:", "choices": ["fast", "slow", "≈3e8 m/s"], "gold": 2},
        {"query": "Question: Why is the sky blue?\nAnswer:", "choices": ["scattering", "paint", "the sea", "luck"],
         "gold": 0},
        {"query": "Question: Never scored?\nAnswer:", "choices": ["x", "y"], "gold": 0},
    ],
}
LAMBADA = [
    {"context": "He opened the door and saw his old", "continuation": " friend"},
    {"context": "She poured a cup of", "continuation": " café"},
    {"context": "aaaaaaaaaaaaaaaaaaaa", "continuation": "a"},
    {"context": "Never scored", "continuation": " x"},
]
LIMIT = 3


@pytest.fixture(scope="module")
def task_run(checkpoint):
    """One stock lm-eval run of the five task YAMLs, from a folder holding data/tasks/*.jsonl (the YAMLs' paths)."""
    folder = checkpoint / "tasks_run"
    (folder / "data" / "tasks").mkdir(parents=True)
    for name, rows in {**MC_TASKS, "lambada": LAMBADA}.items():
        (folder / "data" / "tasks" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = ",".join(f"blt_{name}" for name in [*MC_TASKS, "lambada"])
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
               f"pretrained={checkpoint / 'model'},trust_remote_code=True,dtype=float32", "--tasks", tasks,
               "--include_path", str(REPO / "eval" / "tasks"), "--device", "cpu", "--batch_size", "4",
               "--limit", str(LIMIT), "--output_path", str(folder / "out"), "--log_samples"]
    run = subprocess.run(command, cwd=folder, env=_offline_env(checkpoint / "hf_home"), capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(Path(glob.glob(f"{folder}/out/**/results_*.json", recursive=True)[0]).read_text())
    samples = {}
    for path in glob.glob(f"{folder}/out/**/samples_*.jsonl", recursive=True):
        task = path.split("samples_")[1].rsplit("_", 1)[0]
        samples[task] = sorted((json.loads(line) for line in Path(path).read_text().splitlines()),
                               key=lambda s: s["doc_id"])
    return results["results"], samples


def _continuation_scores(model, context, continuation):
    """Direct loglikelihood of `continuation` after BOS + `context`, and whether every byte of it is the argmax."""
    ids = [1] + [b + 4 for b in (context + continuation).encode()]
    start = 1 + len(context.encode())
    with torch.no_grad():
        logprobs = model(torch.tensor([ids]), use_cache=False).logits.log_softmax(-1)[0]
    targets = range(start, len(ids))
    return (sum(logprobs[i - 1, ids[i]].item() for i in targets),
            all(int(logprobs[i - 1].argmax()) == ids[i] for i in targets))


def _best(scores):
    return max(range(len(scores)), key=lambda i: scores[i])


def test_multiple_choice_tasks_score_and_aggregate_like_a_direct_computation(checkpoint, task_run):
    results, samples = task_run
    model = BLTForCausalLM.from_pretrained(checkpoint / "model").eval()
    for name, docs in MC_TASKS.items():
        task = f"blt_{name}"
        assert [s["doc"] for s in samples[task]] == docs[:LIMIT]  # read from data/tasks/ under the cwd
        per_doc = {"acc": [], "acc_norm": [], "acc_bytes": []}
        gold_nats, gold_bytes = 0.0, 0
        for sample in samples[task]:
            doc = sample["doc"]
            scored = [" " + c for c in doc["choices"]]  # the default target delimiter
            logged = [float(r[0]) for r in sample["filtered_resps"]]
            direct = [_continuation_scores(model, doc["query"], c)[0] for c in scored]
            assert logged == pytest.approx(direct, abs=1e-3), task
            metrics = {
                "acc": float(_best(logged) == doc["gold"]),
                "acc_norm": float(_best([ll / len(c) for ll, c in zip(logged, scored, strict=True)]) == doc["gold"]),
                "acc_bytes": float(_best([ll / len(c.encode()) for ll, c in zip(logged, scored, strict=True)])
                                   == doc["gold"]),
            }
            for metric, value in metrics.items():
                assert sample[metric] == value, (task, metric)
                per_doc[metric].append(value)
            gold_nats -= logged[doc["gold"]]
            gold_bytes += len(scored[doc["gold"]].encode())
        for metric, values in per_doc.items():
            assert results[task][f"{metric},none"] == pytest.approx(sum(values) / len(values)), (task, metric)
        assert results[task]["bits_per_byte,none"] == pytest.approx(gold_nats / gold_bytes / math.log(2), rel=1e-6)


def test_lambada_task_scores_and_aggregates_like_a_direct_computation(checkpoint, task_run):
    results, samples = task_run
    model = BLTForCausalLM.from_pretrained(checkpoint / "model").eval()
    assert [s["doc"] for s in samples["blt_lambada"]] == LAMBADA[:LIMIT]
    nats, count, greedy = 0.0, 0, []
    for sample in samples["blt_lambada"]:
        doc = sample["doc"]
        (logged, logged_greedy), = sample["filtered_resps"]
        ll, is_greedy = _continuation_scores(model, doc["context"], doc["continuation"])  # no target delimiter
        assert float(logged) == pytest.approx(ll, abs=1e-3)
        assert logged_greedy == str(is_greedy) and sample["acc"] == float(is_greedy)
        nats -= float(logged)
        count += len(doc["continuation"].encode())
        greedy.append(float(is_greedy))
    assert results["blt_lambada"]["acc,none"] == pytest.approx(sum(greedy) / len(greedy))
    assert results["blt_lambada"]["bits_per_byte,none"] == pytest.approx(nats / count / math.log(2), rel=1e-6)


# --------------------------------------------------------------------------------------------- eval/prepare_tasks.py


def test_prepare_tasks_rows_convert_hellaswag_piqa_and_arc():
    from datasets import Dataset

    from eval.prepare_tasks import rows

    hellaswag = Dataset.from_list([{
        "activity_label": "Home and Garden", "ctx_a": "[header] How to water plants. [title] Fill a can.",
        "ctx_b": "you", "endings": ["water the [step] plants.", "  sing."], "label": "1",
    }])
    assert rows("hellaswag", hellaswag) == [{
        "query": "Home and Garden: How to water plants.. Fill a can. You",
        "choices": ["water the plants.", "sing."], "gold": 1,
    }]
    piqa = Dataset.from_list([{"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Shout.", "label": 1}])
    assert rows("piqa", piqa) == [
        {"query": "Question: Open a jar\nAnswer:", "choices": ["Twist the lid.", "Shout."], "gold": 1}]
    arc = Dataset.from_list([
        {"question": "What is ice?", "choices": {"text": ["rock", "frozen water", "air"], "label": ["A", "B", "C"]},
         "answerKey": "B"},
        {"question": "Pick four", "choices": {"text": ["1", "2", "3", "4"], "label": ["1", "2", "3", "4"]},
         "answerKey": "4"},
    ])
    assert rows("arc_easy", arc) == [
        {"query": "Question: What is ice?\nAnswer:", "choices": ["rock", "frozen water", "air"], "gold": 1},
        {"query": "Question: Pick four\nAnswer:", "choices": ["1", "2", "3", "4"], "gold": 3},
    ]


# ------------------------------------------------------------------------------------------ eval/run_benchmarks.py


def test_run_benchmarks_collects_the_last_json_line_of_each_bench_script(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bench_alpha.py").write_text(
        "import json\nprint('warming up')\nprint(json.dumps({'early': 1}))\n"
        "print(json.dumps({'bytes_per_second': 1.5, 'cpus': 2, 'memory': {'peak_mb': 12}}))\n")
    (bench / "bench_beta.py").write_text("print('{\"steps\": 3}')\n")
    (bench / "bench_broken.py").write_text("raise SystemExit(3)\n")
    (bench / "bench_chatty.py").write_text("print('done, but no JSON')\n")
    (bench / "helper.py").write_text("raise SystemExit('not a benchmark')\n")
    out, logs = tmp_path / "benchmarks.json", tmp_path / "logs"
    run = subprocess.run([sys.executable, str(REPO / "eval" / "run_benchmarks.py"), "--folder", str(bench),
                          "--out", str(out), "--logs", str(logs)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    expected = {
        "bench_alpha": {"bytes_per_second": 1.5, "cpus": 2, "memory": {"peak_mb": 12}},
        "bench_beta": {"steps": 3},
        "bench_broken": {"error": 3},
        "bench_chatty": {"error": "last line is not JSON"},
    }
    assert json.loads(out.read_text()) == expected
    assert (logs / "bench_alpha.log").read_text().startswith("warming up\n")  # each benchmark's whole output
    lines = run.stdout.splitlines()
    assert json.loads(lines[-1]) == expected
    table = {tuple(part.strip() for part in line.split("|")) for line in lines if "|" in line}
    assert {("bench_alpha bytes_per_second", "1.5"), ("bench_alpha memory.peak_mb", "12"),
            ("bench_beta steps", "3"), ("bench_broken error", "3")} <= table
    assert not any("cpus" in row[0] for row in table)

    only = subprocess.run([sys.executable, str(REPO / "eval" / "run_benchmarks.py"), "--folder", str(bench),
                           "--out", str(out), "--logs", str(logs), "--only", "beta"], capture_output=True, text=True,
                          timeout=120)
    assert only.returncode == 0 and json.loads(out.read_text()) == {"bench_beta": {"steps": 3}}


# ------------------------------------------------------------------------------------------ eval/eval_byteified.py


def _eval_byteified():
    spec = importlib.util.spec_from_file_location("eval_byteified", REPO / "eval" / "eval_byteified.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_byteified_paired_error_is_the_standard_error_of_per_document_differences():
    import statistics

    tool = _eval_byteified()
    samples = [{"doc_id": 2, "acc": 1.0}, {"doc_id": 0, "acc": 0.0}, {"doc_id": 1, "acc": 1.0}]
    assert tool.per_document(samples, "acc") == [0.0, 1.0, 1.0]  # in document order, not run order
    a, b = [1, 0, 1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 1, 1, 1]
    differences = [y - x for x, y in zip(a, b, strict=True)]
    expected = statistics.stdev(differences) / math.sqrt(len(differences))
    assert tool.paired_standard_error(a, b) == pytest.approx(expected)
    assert tool.paired_standard_error(a, a) == 0.0
    assert tool.paired_standard_error([1.0], [0.0]) is None and tool.paired_standard_error(a, b[:3]) is None


def test_eval_byteified_merge_joins_per_document_scores_and_refuses_other_settings(tmp_path):
    tool = _eval_byteified()
    settings = {"limit": 4, "robustness_limit": 0}
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"settings": settings, "models": {"smollm2": {
        "tasks": {"blt_piqa": {"acc_norm": 0.5}}, "per_document": {"blt_piqa": [1, 0]}, "seconds": {"blt_piqa": 1}}}}))
    second.write_text(json.dumps({"settings": settings, "models": {"smollm2": {
        "tasks": {"blt_lambada": {"acc": 1.0}}, "per_document": {"blt_lambada": [1, 1]},
        "seconds": {"blt_lambada": 2}}}}))
    tool.merge_partials(first, second)
    merged = json.loads(first.read_text())["models"]["smollm2"]
    assert merged["per_document"] == {"blt_piqa": [1, 0], "blt_lambada": [1, 1]}
    assert set(merged["tasks"]) == {"blt_piqa", "blt_lambada"}
    second.write_text(json.dumps({"settings": {**settings, "limit": 5}, "models": {}}))
    with pytest.raises(ValueError, match="other settings"):
        tool.merge_partials(first, second)


def test_eval_byteified_merge_of_suites_only_runs_adds_no_empty_task_table(tmp_path):
    tool = _eval_byteified()
    settings = {"limit": 0, "robustness_limit": 2}
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    for path, task in ((first, "cute_spelling"), (second, "robust_hellaswag")):
        path.write_text(json.dumps({"settings": settings, "models": {"byteified": {
            "robustness_results": {task: {"acc": 0.5}}, "seconds": {task: 1}}}}))
    tool.merge_partials(first, second)
    merged = json.loads(first.read_text())["models"]["byteified"]
    assert set(merged) == {"robustness_results", "seconds"}  # no "tasks": the tables would list offline tasks
    assert set(merged["robustness_results"]) == {"cute_spelling", "robust_hellaswag"}


def test_compare_task_runs_pairs_one_models_documents_across_runs_and_refuses_unequal_document_counts(tmp_path):
    spec = importlib.util.spec_from_file_location("compare_task_runs", REPO / "eval" / "compare_task_runs.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    settings = {"limit": 4}
    split_a, split_b, after = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "after.json"
    split_a.write_text(json.dumps({"settings": settings, "models": {"byteified": {
        "per_document": {"blt_piqa": [1, 0, 1, 0]}}, "smollm2": {"per_document": {"blt_piqa": [1, 1, 1, 1]}}}}))
    split_b.write_text(json.dumps({"settings": settings, "models": {"byteified": {
        "per_document": {"blt_lambada": [0, 0, 1, 1]}}}}))
    after.write_text(json.dumps({"settings": settings, "models": {"byteified": {
        "per_document": {"blt_piqa": [1, 1, 1, 0], "blt_lambada": [0, 0, 1, 1]}}}}))
    rows = tool.compare(tool.joined([split_a, split_b], "byteified"), tool.joined([after], "byteified"))
    assert set(rows) == {"blt_piqa", "blt_lambada"}
    assert rows["blt_piqa"]["before"] == 0.5 and rows["blt_piqa"]["after"] == 0.75  # not SmolLM2's [1, 1, 1, 1]
    assert rows["blt_piqa"]["difference"] == 0.25 and rows["blt_piqa"]["paired_se"] == 0.25
    assert rows["blt_lambada"]["difference"] == 0.0 and rows["blt_lambada"]["paired_se"] == 0.0
    after.write_text(json.dumps({"settings": settings, "models": {"byteified": {"per_document": {"blt_piqa": [1]}}}}))
    with pytest.raises(ValueError, match="not the same documents"):
        tool.compare(tool.joined([split_a], "byteified"), tool.joined([after], "byteified"))
