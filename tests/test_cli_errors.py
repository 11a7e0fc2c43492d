"""blt-hf errors: one line on stderr (`...: error: message`), exit status 2, no traceback unless asked for."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import blt_hf
from blt_hf.tools.cli import main
from tests.utils import tiny_model

SOURCE = Path(blt_hf.__file__).resolve().parents[1]  # the blt_hf these tests import, for subprocesses


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    (root / "empty").mkdir()
    (root / "llama").mkdir()
    (root / "llama" / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 32000}))
    tiny_model(seed=2, max_position_embeddings=4096).save_pretrained(root / "model")
    (root / "meta").mkdir()
    (root / "meta" / "params.json").write_text(json.dumps({"model": {"dim_global": 64, "n_layers_global": 2}}))
    torch.save({}, root / "meta" / "consolidated.pth")
    (root / "run").mkdir()
    (root / "run" / "metrics.json").write_text("{}")
    (root / "text.txt").write_text("some text\n")
    return root


def _status(argv) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse errors exit through the parser
        return stop.code


# (argv with {root} for the fixture folder, words of the one error line)
CLI_CASES = [
    (["eval-bpb", "{root}/text.txt", "--model", "{root}/model", "--batch-size", "0"], ["--batch-size", ">= 1"]),
    (["eval-bpb", "{root}/text.txt", "--model", "{root}/model", "--row-length", "1"], ["--row-length", ">= 2"]),
    (["eval-bpb", "{root}/missing.txt", "--model", "{root}/model"], ["missing.txt: no such file"]),
    (["convert-llama", "{root}/llama", "{root}/out", "--cross-attn-k", "0"], ["--cross-attn-k", ">= 1"]),
    (["convert-meta", "{root}/meta", "{root}/out"], ["lack", "cross_attn_k"]),
    (["patch", "hi", "--model", "{root}/empty"], ["config.json"]),
    (["patch", "hi", "--model", "{root}/llama"], ["'llama' checkpoint", "convert-llama"]),
    (["patch", "hi", "--model", "{root}/typo/model"], ["no such checkpoint folder"]),
    (["calibrate", "{root}/text.txt", "--model", "{root}/model", "--target-bytes-per-patch", "nan"],
     ["--target-bytes-per-patch", "number"]),
    (["train", "--train", "{root}/text.txt", "--output", "{root}/run"], ["already holds files", "--resume"]),
    (["train", "--train", "{root}/text.txt", "--output", "{root}/new", "--batch-size", "0"],
     ["batch_size", ">= 1"]),
    (["train-entropy", "--train", "{root}/text.txt", "--steps", "ten"], ["--steps", "'ten'"]),
    (["no-such-command"], ["invalid choice"]),
]


@pytest.mark.parametrize("argv, words", CLI_CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in CLI_CASES])
def test_cli_errors_are_one_line_with_status_2(folders, capsys, monkeypatch, argv, words):
    monkeypatch.delenv("BLT_HF_DEBUG", raising=False)
    status = _status([arg.format(root=folders) for arg in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, captured.err
    assert len(lines) == 1 and ": error: " in lines[0] and lines[0].startswith("blt-hf"), captured.err
    assert all(word in lines[0] for word in words), lines[0]


def test_a_cli_error_in_a_real_process_is_one_line_and_debug_shows_the_traceback(folders):
    env = {**os.environ, "PYTHONPATH": str(SOURCE), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("BLT_HF_DEBUG", None)
    command = [sys.executable, "-m", "blt_hf.tools.cli", "patch", "hi", "--model", str(folders / "empty")]
    plain = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [
        f"blt-hf: error: {folders / 'empty'} has no config.json, so it is not a saved BLTForCausalLM checkpoint "
        "(save one with save_pretrained, or pass config=)"
    ]
    debug = subprocess.run(command, env={**env, "BLT_HF_DEBUG": "1"}, capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "OSError" in debug.stderr
    flag = subprocess.run([*command, "--debug"], env=env, capture_output=True, text=True, timeout=300)
    assert "Traceback" in flag.stderr
