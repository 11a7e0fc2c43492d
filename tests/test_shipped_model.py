"""The shipped default model (models/blt-hf-small-en): it loads, scores held-out text as well as it did at training
time, its cached generation is exact, and `make demo` runs on it."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import blt_hf  # noqa: F401
from blt_hf.evaluation.metrics import evaluate_bits_per_byte

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "blt-hf-small-en"
SAMPLE = REPO / "tests" / "data" / "heldout_sample.txt"
MARGIN_BITS = 0.02


@pytest.fixture(scope="module")
def shipped():
    model = AutoModelForCausalLM.from_pretrained(SHIPPED).eval()
    return model, AutoTokenizer.from_pretrained(SHIPPED)


def test_shipped_folder_is_complete_and_small():
    names = {p.name for p in SHIPPED.iterdir()}
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "README.md", "training_results.json",
                 "modeling_blt_hf.py", "configuration_blt_hf.py", "tokenization_blt_hf.py"):
        assert name in names, name
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) < 60e6


def test_held_out_bits_per_byte_is_within_the_margin_of_the_training_time_measurement(shipped):
    recorded = json.loads((SHIPPED / "training_results.json").read_text())
    result = evaluate_bits_per_byte(str(SHIPPED), [str(SAMPLE)], row_length=recorded["row_length"])
    assert result["bytes"] > 5000
    assert result["bits_per_byte"] <= recorded["sample_bits_per_byte"] + MARGIN_BITS
    assert result["bits_per_byte"] < 3.0  # far from uniform (8 bits): the weights are trained
    assert abs(result["bytes_per_patch"] - recorded["sample_bytes_per_patch"]) < 0.05


def test_cached_generation_equals_full_recomputation_on_the_shipped_model(shipped):
    model, tokenizer = shipped
    tokenizer.padding_side = "left"
    batch = tokenizer(["The President said that", "Enter the King, with his"], return_tensors="pt", padding=True)
    with torch.no_grad():
        cached = model.generate(**batch, max_new_tokens=96, do_sample=False, eos_token_id=None)
        uncached = model.generate(**batch, max_new_tokens=96, do_sample=False, eos_token_id=None, use_cache=False)
    assert torch.equal(cached, uncached)
    text = tokenizer.decode(cached[0], skip_special_tokens=True)
    assert text.startswith("The President said that") and len(text.encode()) > len("The President said that") + 48


def test_make_demo_runs_on_the_shipped_model(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": "src"}
    demo = [sys.executable, "-m", "blt_hf.tools.demo", "--plot", str(tmp_path / "patches.png")]
    done = subprocess.run(demo, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "entropy patching by its own entropy model at threshold 2.416 nats" in out
    assert "1.3354 nats belongs to the entropy model of Meta's released 7B BLT" in out
    assert "--- patches" in out and "bytes + BOS in" in out
    prompt, continuation = re.search(r'prompt: +"(.*)"\ncontinuation: +"(.*?)"\n', out, re.S).groups()
    assert prompt == "The President said that the nation" and continuation and not continuation[-1].isspace()
    assert "load average" in out and re.search(r"decoded \d+ bytes/s when it was shipped", out)
    assert "first 64 greedy bytes identical to cached decoding: True" in out
    assert "held-out bits per byte" in out
    assert "Loading weights" not in done.stderr
    assert (tmp_path / "patches.png").stat().st_size > 10_000


def test_demo_sample_is_cut_at_the_last_word_boundary():
    from blt_hf.tools.demo import cut_at_word_boundary

    assert cut_at_word_boundary("s to open the defen") == "s to open the"
    assert cut_at_word_boundary(" of the nation.\nPres") == " of the nation."
    assert cut_at_word_boundary("unbroken") == "unbroken"


def test_shipped_remote_code_is_the_current_package_code():
    # trust_remote_code users run these copies: they must be what blt_hf runs (refresh: train_shipped_model --only card)
    folders = sorted(p.parent for p in (REPO / "models").glob("*/config.json"))
    assert SHIPPED in folders and len(folders) >= 2  # the shipped model and the byte-ified SmolLM2 delta
    for folder in folders:
        modules = sorted(folder.glob("*.py"))
        assert {"modeling_blt_hf.py", "configuration_blt_hf.py", "tokenization_blt_hf.py"} <= {m.name for m in modules}
        stale = [m.name for m in modules if m.read_text() != (REPO / "src" / "blt_hf" / m.name).read_text()]
        assert not stale, f"stale remote code in {folder}: {stale}; run scripts/train_shipped_model.py --only card"
    card = (SHIPPED / "README.md").read_text()
    figure = "eval/results/shipped/bpb_vs_training_flops.png"
    assert card == (REPO / "MODEL_CARD.md").read_text().replace(figure, Path(figure).name)
    assert (SHIPPED / Path(figure).name).read_bytes() == (REPO / figure).read_bytes()
    assert not re.search(r"@[A-Z_]+@", card), "unfilled template fields in the model card"


def test_shipped_folder_generates_with_its_remote_code_where_blt_hf_is_not_importable(shipped, tmp_path):
    model, _ = shipped
    ids = torch.tensor([[1] + [b + 4 for b in b"Enter the King"]])
    script = textwrap.dedent(f"""
        import sys
        sys.modules["blt_hf"] = None
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(SHIPPED)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        ids = torch.tensor({ids.tolist()})
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=None)
        torch.save(out, {str(tmp_path / "out.pt")!r})
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=None)
    assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), expected)


def test_model_card_metadata_parses_as_a_hub_model_card():
    from huggingface_hub import ModelCard

    card = ModelCard((REPO / "MODEL_CARD.md").read_text())
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    (result,) = card.data.eval_results
    recorded = json.loads((SHIPPED / "training_results.json").read_text())
    assert result.metric_type == "bits_per_byte"
    assert result.metric_value == pytest.approx(recorded["heldout_bits_per_byte"], abs=1e-4)
