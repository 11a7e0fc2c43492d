"""lm-evaluation-harness: the stock `hf` backend on a saved folder (remote code) and the registered `blt_hf` one."""

import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blt_hf import BLTForCausalLM, BLTTokenizer
from blt_hf.tokenization_blt_hf import bytes_to_text  # the tokenizer's decoding: one U+FFFD per invalid byte
from tests.utils import tiny_model

MC = [
    {"question": "The cat sat on the", "choices": [" mat", " moon", " idea"], "label": 0},
    {"question": "Water is", "choices": [" wet", " dry"], "label": 0},
    {"question": "One plus one is", "choices": [" two", " three", " eleven", " zero"], "label": 0},
    {"question": "Bytes", "choices": [" are", " é€"], "label": 1},
]
ROLLING = [{"text": "Bytes are all you need, said nobody."}, {"text": "Rolling windows of text, scored byte by byte."}]
GENERATE = [{"question": "Say hi:", "answer": "hi"}, {"question": "Count to three:", "answer": "123"}]


def _task_files(folder):
    (folder / "tasks").mkdir()
    for name, rows in (("mc", MC), ("ppl", ROLLING), ("gen", GENERATE)):
        (folder / "tasks" / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    common = "dataset_path: json\ntest_split: test\nmetadata: {version: 1.0}\n"
    (folder / "tasks" / "mc.yaml").write_text(
        f"task: blt_mc\ndataset_kwargs: {{data_files: {{test: {folder}/tasks/mc.jsonl}}}}\n{common}"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\nmetric_list: [{metric: acc}, {metric: acc_norm}, {metric: acc_bytes}]\n"
    )
    (folder / "tasks" / "ppl.yaml").write_text(
        f"task: blt_ppl\ndataset_kwargs: {{data_files: {{test: {folder}/tasks/ppl.jsonl}}}}\n{common}"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list: [{metric: bits_per_byte}, {metric: byte_perplexity}]\n"
    )
    (folder / "tasks" / "gen.yaml").write_text(
        f"task: blt_gen\ndataset_kwargs: {{data_files: {{test: {folder}/tasks/gen.jsonl}}}}\n{common}"
        "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        'generation_kwargs: {until: ["\\n"], max_gen_toks: 12, do_sample: false}\n'  # a real newline
        "metric_list: [{metric: exact_match}]\n"
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm_eval")
    model = tiny_model(seed=5, patching_threshold=5.1)
    model.save_pretrained(folder / "model")
    BLTTokenizer().save_pretrained(folder / "model")
    _task_files(folder)
    return folder


def _run(workspace, name, model_type, model_args, batch_size):
    command = [sys.executable, "-m", "blt_hf.tools.cli", "lm-eval"] if model_type == "blt_hf" else [
        sys.executable, "-m", "lm_eval"]
    out = workspace / name
    command += ["--model", model_type, "--model_args", model_args, "--tasks", "blt_mc,blt_ppl,blt_gen",
                "--include_path", str(workspace / "tasks"), "--device", "cpu", "--output_path", str(out),
                "--log_samples"]
    if batch_size is not None:
        command += ["--batch_size", str(batch_size)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(workspace / "hf_home"))
    if model_type == "blt_hf":
        env["PYTHONPATH"] = "src"
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads(Path(glob.glob(f"{out}/**/results_*.json", recursive=True)[0]).read_text())["results"]
    samples = {}
    for path in glob.glob(f"{out}/**/samples_*.jsonl", recursive=True):
        task = path.split("samples_")[1].rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return results, samples


@pytest.fixture(scope="module")
def runs(workspace):
    stock = f"pretrained={workspace / 'model'},trust_remote_code=True,dtype=float32"
    return {
        "hf_bs1": _run(workspace, "hf_bs1", "hf", stock, 1),
        "hf_bs4": _run(workspace, "hf_bs4", "hf", stock, 4),
        "blt_hf": _run(workspace, "blt", "blt_hf", f"pretrained={workspace / 'model'},max_batch_bytes=100", None),
    }


def test_stock_hf_backend_loglikelihoods_equal_a_direct_computation(workspace, runs):
    model = BLTForCausalLM.from_pretrained(workspace / "model").eval()
    _, samples = runs["hf_bs1"]
    for sample in samples["blt_mc"]:
        for arguments, response in zip(sample["arguments"].values(), sample["resps"], strict=True):
            context, continuation = arguments["arg_0"], arguments["arg_1"]
            ids = [1] + [b + 4 for b in (context + continuation).encode()]
            start = 1 + len(context.encode())
            with torch.no_grad():
                logprobs = model(torch.tensor([ids]), use_cache=False).logits.log_softmax(-1)[0]
            direct = sum(logprobs[i - 1, ids[i]].item() for i in range(start, len(ids)))
            assert abs(float(response[0][0]) - direct) < 1e-4


def test_batch_sizes_one_and_four_and_both_backends_agree(runs):
    reference, reference_samples = runs["hf_bs1"]
    for name in ("hf_bs4", "blt_hf"):
        results, samples = runs[name]
        for task, metrics in reference.items():
            for metric, value in metrics.items():
                if isinstance(value, float):
                    assert results[task][metric] == pytest.approx(value, abs=1e-4), (name, task, metric)
        for task in ("blt_mc", "blt_ppl"):
            for ours, theirs in zip(samples[task], reference_samples[task], strict=True):
                got = [float(r[0][0] if isinstance(r[0], list) else r[0]) for r in ours["resps"]]
                want = [float(r[0][0] if isinstance(r[0], list) else r[0]) for r in theirs["resps"]]
                assert got == pytest.approx(want, abs=1e-4)
        generated = [s["resps"] for s in samples["blt_gen"]]
        assert generated == [s["resps"] for s in reference_samples["blt_gen"]]


def _loglikelihood(model, ids, start):
    """Summed log-probability of ids[start:] given what precedes each of them (one full forward)."""
    with torch.no_grad():
        logprobs = model(torch.tensor([ids]), use_cache=False).logits.log_softmax(-1)[0]
    return sum(logprobs[i - 1, ids[i]].item() for i in range(start, len(ids)))


def _rolling_reference(model, text):
    """The harness's rolling convention: its prefix token (BOS) + the encoded text, which for this tokenizer
    starts with its own BOS; every token after the prefix is scored, that second BOS included."""
    ids = [1, 1] + [b + 4 for b in text.encode()]
    return _loglikelihood(model, ids, 1)


def _greedy_reference(model, context, max_gen_toks=12, stop="\n", keep=None):
    """Plain greedy decoding: the full forward on the whole sequence at every step, no cache, no generate().
    `keep`: left-truncate BOS + context to its last `keep` ids first, as the harness does."""
    ids = ([1] + [b + 4 for b in context.encode()])[-keep if keep else 0 :]
    generated = []
    with torch.no_grad():
        for _ in range(max_gen_toks):
            next_id = int(model(torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
            if next_id == 2:  # EOS: the harness adds it to the stop sequences
                break
            ids.append(next_id)
            generated.append(next_id)
    return bytes_to_text(bytes(i - 4 for i in generated if i >= 4)).split(stop)[0]


def test_rolling_loglikelihoods_and_bits_per_byte_equal_a_direct_computation(workspace, runs):
    model = BLTForCausalLM.from_pretrained(workspace / "model").eval()
    results, samples = runs["hf_bs1"]
    direct = {row["text"]: _rolling_reference(model, row["text"]) for row in ROLLING}
    for sample in samples["blt_ppl"]:
        assert float(sample["resps"][0][0]) == pytest.approx(direct[sample["doc"]["text"]], abs=1e-3)
    nats = -sum(direct.values()) / sum(len(row["text"].encode()) for row in ROLLING)
    assert results["blt_ppl"]["bits_per_byte,none"] == pytest.approx(nats / math.log(2), rel=1e-5)


def test_generations_equal_a_greedy_full_recompute_loop(workspace, runs):
    model = BLTForCausalLM.from_pretrained(workspace / "model").eval()
    for name in ("hf_bs1", "blt_hf"):
        _, samples = runs[name]
        assert len(samples["blt_gen"]) == len(GENERATE)
        for sample in samples["blt_gen"]:
            assert sample["arguments"]["gen_args_0"]["arg_1"]["until"] == ["\n"]
            assert sample["resps"][0][0] == _greedy_reference(model, sample["doc"]["question"]), name


def _instances(request_type, arguments):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=request_type, doc={}, arguments=args, idx=0) for args in arguments]


@pytest.mark.parametrize("max_length", [None, 24])
def test_blt_hf_backend_batches_generation_rows_by_their_bytes(workspace, monkeypatch, max_length):
    from blt_hf.evaluation.lm_eval_adapter import BLTLM

    budget, max_gen_toks = 100, 12
    extra = {} if max_length is None else {"max_length": max_length}
    lm = BLTLM(pretrained=str(workspace / "model"), max_batch_bytes=budget, device="cpu", **extra)
    rows_per_call = []
    model_generate = lm._model_generate

    def recording_generate(context, **kwargs):
        rows_per_call.append(context.shape[0])
        return model_generate(context, **kwargs)

    monkeypatch.setattr(lm, "_model_generate", recording_generate)
    contexts = [row["question"] for row in GENERATE] + ["Bytes: é€", "Two"]
    gen_kwargs = {"until": ["\n"], "max_gen_toks": max_gen_toks, "do_sample": False}
    outputs = lm.generate_until(_instances("generate_until", [(c, gen_kwargs) for c in contexts]))

    room = (max_length or 10**9) - max_gen_toks  # the harness keeps the last max_length - max_gen_toks ids
    longest = max(min(len(c.encode()) + 1, room) for c in contexts) + max_gen_toks
    assert rows_per_call[0] == min(budget // longest, len(contexts)) > 1
    assert sum(rows_per_call) == len(contexts)

    model = BLTForCausalLM.from_pretrained(workspace / "model").eval()
    for context, output in zip(contexts, outputs, strict=True):
        assert output == _greedy_reference(model, context, max_gen_toks, keep=max_length and room)


def test_blt_hf_backend_batches_rolling_windows_by_their_bytes(workspace, monkeypatch):
    from blt_hf.evaluation.lm_eval_adapter import BLTLM

    lm = BLTLM(pretrained=str(workspace / "model"), max_batch_bytes=100, device="cpu")
    rows_per_call = []
    loglikelihood_tokens = lm._loglikelihood_tokens

    def recording(requests, **kwargs):
        rows_per_call.append(len(requests))
        return loglikelihood_tokens(requests, **kwargs)

    monkeypatch.setattr(lm, "_loglikelihood_tokens", recording)
    texts = [row["text"] for row in ROLLING]
    scores = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(t,) for t in texts]))
    longest = max(len(t.encode()) + 1 for t in texts)  # one window per text: prefix + BOS + all bytes but the last
    assert rows_per_call == [min(100 // longest, len(texts))] and rows_per_call[0] > 1
    model = BLTForCausalLM.from_pretrained(workspace / "model").eval()
    for text, score in zip(texts, scores, strict=True):
        assert score == pytest.approx(_rolling_reference(model, text), abs=1e-3)
