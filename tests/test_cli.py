"""blt-hf patch / calibrate."""

import json
from pathlib import Path

import pytest
import torch

from blt_hf import BLTConfig
from blt_hf.cli import main
from tests.utils import tiny_model

TEXT = "The entropy model decides where patches start. Patches are long where text is easy."


@pytest.fixture()
def checkpoint(tmp_path):
    tiny_model(seed=21, patching_threshold=5.15).save_pretrained(tmp_path / "model")
    corpus = tmp_path / "corpus.txt"
    license_text = Path("/usr/share/common-licenses/Apache-2.0").read_text()
    corpus.write_text((TEXT + "\n") * 40 + license_text)
    return tmp_path / "model", corpus


def test_patch_prints_the_patches_and_per_byte_entropies_and_plots(checkpoint, capsys, tmp_path):
    model_dir, _ = checkpoint
    assert main(["patch", TEXT, "--model", str(model_dir), "--plot", str(tmp_path / "plot.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    pieces = out[0].strip("|").split("|")
    assert pieces[0] == "<s>" and "".join(pieces[1:]) == TEXT
    assert len(out) == 3 + len(TEXT.encode()) + 1  # header lines, one line per byte, and the virtual next byte
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_patch_json_lengths_sum_to_bytes_plus_one(checkpoint, capsys):
    model_dir, _ = checkpoint
    main(["patch", TEXT, "--model", str(model_dir), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert sum(report["lengths"]) == len(TEXT.encode()) + 2 and len(report["entropies"]) == len(TEXT.encode()) + 1


@pytest.mark.parametrize("rule, target", [("global", 4.5), ("monotonic", 2.5), ("combined", 3.0)])
def test_calibrate_fits_the_threshold_to_the_target_patch_size(checkpoint, capsys, rule, target):
    model_dir, corpus = checkpoint
    extra = ["--threshold-add", "0.0"] if rule == "combined" else []
    assert main(["calibrate", str(corpus), "--model", str(model_dir), "--target-bytes-per-patch", str(target),
                 "--rule", rule, *extra]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert abs(result["bytes_per_patch"] - target) / target < 0.05
    config = BLTConfig.from_pretrained(model_dir)
    assert config.patching_threshold == pytest.approx(result["threshold"])
    assert config.monotonicity == (rule == "monotonic")
    # the saved threshold reproduces the patch size when the model patches by itself
    from blt_hf import BLTForCausalLM, PatchingRule
    from blt_hf.cli import _read_rows, bytes_per_patch

    model = BLTForCausalLM.from_pretrained(model_dir)
    ids, mask = _read_rows([str(corpus)], 1024, 2_000_000)
    with torch.no_grad():
        entropies = model.model.patcher(ids, mask).entropies
    assert abs(bytes_per_patch(PatchingRule.from_config(model.config), ids, mask, entropies) - target) / target < 0.05


def test_calibrate_rejects_an_unreachable_target(checkpoint):
    model_dir, corpus = checkpoint
    with pytest.raises(ValueError, match="outside what this rule reaches"):
        main(["calibrate", str(corpus), "--model", str(model_dir), "--target-bytes-per-patch", "100000"])
