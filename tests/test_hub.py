"""blt-hf push: the upload is captured by a fake Hub API; the pushed folder loads with remote code elsewhere."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from blt_hf import BLTTokenizer
from blt_hf.tools.hub import push
from tests.utils import random_ids, tiny_model


class FakeHub:
    """Records the calls and copies the uploaded folder to a local 'remote'."""

    def __init__(self, remote):
        self.remote, self.calls = remote, []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        self.calls.append(("upload_folder", repo_id, sorted(os.listdir(folder_path))))
        shutil.copytree(folder_path, self.remote / repo_id.replace("/", "__"))
        return f"https://huggingface.co/{repo_id}/commit/fake"


def test_push_uploads_a_complete_folder_that_loads_with_remote_code(tmp_path):
    model = tiny_model(seed=8)
    model.save_pretrained(tmp_path / "model")
    BLTTokenizer().save_pretrained(tmp_path / "model")
    (tmp_path / "card.md").write_text("---\nlicense: apache-2.0\n---\n# card\n")
    hub = FakeHub(tmp_path / "remote")
    url = push(tmp_path / "model", "someone/tiny-blt", model_card=tmp_path / "card.md", private=True, api=hub)
    assert url.endswith("/commit/fake")
    assert hub.calls[0] == ("create_repo", {"repo_id": "someone/tiny-blt", "private": True, "exist_ok": True,
                                            "repo_type": "model"})
    uploaded = hub.calls[1][2]
    for name in ("README.md", "config.json", "model.safetensors", "tokenizer_config.json", "modeling_blt_hf.py",
                 "configuration_blt_hf.py", "tokenization_blt_hf.py", "generation_config.json"):
        assert name in uploaded, name
    pushed = tmp_path / "remote" / "someone__tiny-blt"
    ids = random_ids(40, seed=8)
    torch.save(ids, tmp_path / "ids.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["blt_hf"] = None
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(pushed)!r}, trust_remote_code=True)
        tok = AutoTokenizer.from_pretrained({str(pushed)!r}, trust_remote_code=True)
        ids = torch.load({str(tmp_path / 'ids.pt')!r}, weights_only=True)
        torch.save(model(ids).logits, {str(tmp_path / 'out.pt')!r})
        assert tok("abc")["input_ids"] == [1, 101, 102, 103]
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), model(ids).logits)


def test_incomplete_folders_are_refused_before_anything_is_sent(tmp_path):
    tiny_model(seed=9).save_pretrained(tmp_path / "model")  # no tokenizer, no model card
    hub = FakeHub(tmp_path / "remote")
    with pytest.raises(ValueError, match="tokenizer_config.json, README.md"):
        push(tmp_path / "model", "someone/x", api=hub)
    assert hub.calls == []
