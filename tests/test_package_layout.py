"""The package tiers: the top level is the model a checkpoint carries; tools live in subpackages with extras."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from blt_hf import BLTTokenizer
from tests.utils import tiny_model

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "blt_hf"
TOOL_PACKAGES = ("convert", "evaluation", "tools", "training")
OPTIONAL = ("accelerate", "datasets", "evaluate", "lm_eval", "matplotlib")

# A subprocess prelude that makes the optional packages unimportable, as on a machine without the extras
# (a None entry in sys.modules: `import` raises ModuleNotFoundError and find_spec answers None).
WITHOUT_EXTRAS = f"import sys\nsys.modules.update(dict.fromkeys({OPTIONAL!r}))\n"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, cwd=PACKAGE.parents[1])


def test_top_level_modules_are_exactly_the_remote_code_a_saved_checkpoint_carries(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    BLTTokenizer().save_pretrained(tmp_path)
    carried = {p.name for p in tmp_path.glob("*.py")}
    top_level = {p.name for p in PACKAGE.glob("*.py")} - {"__init__.py"}
    assert carried == top_level
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} == set(TOOL_PACKAGES)


def test_model_files_import_no_tool_subpackage():
    for module in set(PACKAGE.glob("*.py")) - {PACKAGE / "__init__.py"}:  # __init__ re-exports BLTTrainer lazily
        text = module.read_text()
        for package in TOOL_PACKAGES:
            assert f"from .{package}" not in text and f"blt_hf.{package}" not in text, (module.name, package)


def test_the_model_loads_generates_and_saves_without_the_optional_extras(tmp_path):
    done = _run(f"""
        import torch, blt_hf
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from tests.utils import tiny_model
        tiny_model().save_pretrained({str(tmp_path)!r})
        blt_hf.BLTTokenizer().save_pretrained({str(tmp_path)!r})
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})
        tokenizer = AutoTokenizer.from_pretrained({str(tmp_path)!r})
        ids = tokenizer(["A BLT", "Bytes!"], return_tensors="pt", padding=True)
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
        assert out.shape == (2, ids["input_ids"].shape[1] + 8)
        loaded = [m for m, v in sys.modules.items() if m.split(".")[0] in {OPTIONAL!r} and v is not None]
        tools = [m for m in sys.modules if m.startswith(("blt_hf.tools", "blt_hf.training", "blt_hf.evaluation",
                                                         "blt_hf.convert"))]
        assert not loaded and not tools, (loaded, tools)
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.parametrize(("call", "extra", "package"), [
    ("from blt_hf.training.data import text_dataset; text_dataset(files=[])", "train", "datasets"),
    ("from blt_hf.training import BLTTrainer; BLTTrainer(model=None)", "train", "accelerate"),
    ("from blt_hf.tools.reports import plot_report; plot_report({'entropies': [1.0]}, 'x.png')", "eval",
     "matplotlib"),
    ("from blt_hf.tools.cli import main; raise SystemExit(main(['lm-eval', '--help']))", "eval", "lm_eval"),
])
def test_a_tool_whose_extra_is_missing_names_the_extra_to_install(call, extra, package):
    done = _run(call)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    # a library call raises ImportError; blt-hf turns it into its one-line error
    assert last.startswith(("ImportError", "blt-hf: error:")), last
    assert f"pip install 'blt_hf[{extra}]'" in last and package in last, last
