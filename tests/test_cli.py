"""blt-hf patch / calibrate / help."""

import json
import re
from pathlib import Path

import pytest
import torch

from blt_hf import BLTConfig
from blt_hf.tools.cli import main
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
    assert report["patch_count"] == sum(1 for n in report["lengths"] if n) - (report["lengths"][-1] == 1)


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
    from blt_hf.tools.reports import bytes_per_patch, read_byte_rows

    model = BLTForCausalLM.from_pretrained(model_dir)
    ids, mask = read_byte_rows([str(corpus)], 1024, 2_000_000)
    with torch.no_grad():
        entropies = model.model.patcher(ids, mask).entropies
    assert abs(bytes_per_patch(PatchingRule.from_config(model.config), ids, mask, entropies) - target) / target < 0.05


def test_calibrate_rejects_an_unreachable_target(checkpoint, capsys):
    model_dir, corpus = checkpoint
    assert main(["calibrate", str(corpus), "--model", str(model_dir), "--target-bytes-per-patch", "100000"]) == 2
    assert "outside what this rule reaches" in capsys.readouterr().err


def test_calibrate_without_a_model_uses_the_default_and_never_rewrites_it(checkpoint, capsys, tmp_path, monkeypatch):
    model_dir, corpus = checkpoint
    before = (model_dir / "config.json").read_text()
    monkeypatch.setenv("BLT_HF_MODEL", str(model_dir))
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", str(corpus), "--target-bytes-per-patch", "4.5"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (model_dir / "config.json").read_text() == before
    written = BLTConfig.from_pretrained(tmp_path / "blt-hf-calibrated")
    assert result["written_to"] == "blt-hf-calibrated"
    assert written.patching_threshold == pytest.approx(result["threshold"])


@pytest.mark.parametrize("next_opens", [False, True])
def test_printed_report_and_plot_title_give_the_same_patch_count(next_opens, tmp_path, monkeypatch):
    """One count for both: BOS's own patch included, a patch holding only "the next byte" not."""
    from matplotlib.figure import Figure

    from blt_hf.tools.reports import plot_report, show_report

    data = b"abcdef"  # positions 0 (BOS) .. 6, and 7 = the next byte
    patches = [(0, 1), (1, 4), (4, 7), (7, 8)] if next_opens else [(0, 1), (1, 4), (4, 8)]
    report = {"bytes": data, "patches": patches, "lengths": [e - s for s, e in patches], "entropies": [1.0] * 7,
              "threshold": 0.5, "threshold_add": None, "monotonicity": False, "mode": "entropy"}
    titles = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (titles.append(fig.axes[0].get_title()),
                                                                save(fig, *a, **k)))
    plot_report(report, tmp_path / "plot.png")
    printed = show_report(report).splitlines()
    assert printed[0] == "|<s>|abc|def|"
    assert titles[0].startswith("6 bytes + BOS in 3 patches (BOS's own patch included")
    assert printed[1].startswith(titles[0] + "; entropy patching")
    assert ("next byte starts a new one" in titles[0]) == next_opens


@pytest.mark.parametrize("rule", ["global", "monotonic", "combined"])
def test_patch_plot_draws_the_threshold_of_each_rule(checkpoint, tmp_path, rule):
    from matplotlib import image

    from blt_hf import BLTForCausalLM
    from blt_hf.tools.reports import patch_report, plot_report

    model = BLTForCausalLM.from_pretrained(checkpoint[0])
    model.config.monotonicity = rule == "monotonic"
    model.config.patching_threshold_add = 0.1 if rule == "combined" else None
    report = patch_report(model, TEXT)
    assert report["monotonicity"] == (rule == "monotonic")
    plot_report(report, tmp_path / "plot.png")
    pixels = image.imread(tmp_path / "plot.png")
    assert pixels.shape[0] > 300 and pixels.shape[1] > 900
    orange = ((pixels[..., 0] > 0.9) & (pixels[..., 1] > 0.4) & (pixels[..., 1] < 0.6) & (pixels[..., 2] < 0.2)).sum()
    assert (orange > 100) == (rule != "global")  # the entropy rise is drawn exactly when the rule uses it


def test_convert_transformers_command_gives_the_logits_of_transformers_blt(tmp_path, capsys):
    from blt_hf import BLTForCausalLM
    from tests.utils import random_ids, tiny_hf_config, tiny_hf_model

    reference = tiny_hf_model(tiny_hf_config(threshold=1e9), seed=3)  # one patch: no entropy tie can differ
    reference.save_pretrained(tmp_path / "hf")
    assert main(["convert-transformers", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0
    assert "wrote" in capsys.readouterr().out
    ids = random_ids(90, seed=3)
    with torch.no_grad():
        expected = reference(ids).logits
        got = BLTForCausalLM.from_pretrained(tmp_path / "ours")(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert main(["convert-transformers", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 2
    assert re.search("not empty|exists", capsys.readouterr().err)


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    listed = capsys.readouterr().out
    for command in ("patch", "calibrate", "convert-llama", "convert-meta", "convert-transformers", "eval-bpb",
                    "robustness", "push", "train", "train-entropy", "train-byte-llama", "lm-eval"):
        assert f"    {command} " in listed or f"    {command}\n" in listed, command


@pytest.mark.parametrize("command", ["train", "train-entropy", "train-byte-llama", "patch", "eval-bpb"])
def test_each_subcommand_help_names_the_subcommand_in_its_usage(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: blt-hf {command} ")


def test_lm_eval_help_says_it_is_blt_hf_lm_eval(capsys):
    with pytest.raises(SystemExit):
        main(["lm-eval", "--help"])
    assert capsys.readouterr().out.startswith("blt-hf lm-eval: lm-eval's own command line")
