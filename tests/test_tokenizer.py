"""BLTTokenizer: byte ids, special tokens, round trips, persistence, Auto registration, patch lengths."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling

from blt_hf import BLTTokenizer
from tests.utils import PATCHING_VARIANTS, calibrate_patching, tiny_model


@pytest.fixture(scope="module")
def tok():
    return BLTTokenizer()


def test_ids_are_bytes_plus_four_with_bos_and_no_eos(tok):
    assert tok.encode("hé") == [1, 108, 199, 173]
    assert tok.encode("hé", add_special_tokens=False) == [108, 199, 173]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    assert tok.pad_token_id != tok.eos_token_id and tok.pad_token_id < 4
    assert tok.vocab_size == 260 and len(tok) == 260


def test_literal_special_token_text_stays_bytes(tok):
    assert tok.encode("a</s>b<s>", add_special_tokens=False) == [b + 4 for b in b"a</s>b<s>"]


def test_eos_only_when_asked():
    assert BLTTokenizer(add_eos_token=True).encode("a") == [1, 101, 2]


def test_padding_left_by_default_and_right_on_request(tok):
    assert tok(["a", "abc"], padding=True)["input_ids"] == [[0, 0, 1, 101], [1, 101, 102, 103]]
    right = tok(["a", "abc"], padding=True, padding_side="right")
    assert right["input_ids"][0] == [1, 101, 0, 0] and right["attention_mask"][0] == [1, 1, 0, 0]


def test_decode_of_invalid_utf8_never_raises(tok):
    assert tok.decode([0xFF + 4, 104 + 4, 0xC3 + 4]) == "\ufffdh\ufffd"
    assert tok.decode([1, 108, 2], skip_special_tokens=True) == "h"
    assert tok.decode(1) == "<s>"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=())))
def test_decode_encode_round_trips_every_string(text):
    tok = BLTTokenizer()
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_bytes_round_trip_and_decode_never_raises(data):
    tok = BLTTokenizer()
    ids = tok.encode_bytes(data)
    assert ids[0] == 1 and tok.decode_bytes(ids) == data
    tok.decode(ids)


def test_data_collator_pads_and_masks_labels(tok):
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    batch = collator([tok("ab"), tok("abcd")])
    assert batch["input_ids"].shape == (2, 5)
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def _checkpoint(tmp_path, variant="entropy", **overrides):
    model = tiny_model(seed=11, **overrides)
    probe = torch.tensor([1] + [b + 4 for b in b"calibrate the threshold on some text, please!"])
    calibrate_patching(model, variant, [probe])
    model.save_pretrained(tmp_path)
    BLTTokenizer().save_pretrained(tmp_path)
    return model


TEXTS = ["Hello, world! Patches follow the entropy.", "short", "naïve café — ünïcödé"]


@pytest.mark.parametrize("variant", list(PATCHING_VARIANTS))
def test_patch_lengths_from_the_checkpoint_give_the_models_own_logits(tmp_path, variant):
    model = _checkpoint(tmp_path, variant=variant, has_patcher=True, **PATCHING_VARIANTS[variant])
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(tok, BLTTokenizer)
    batch = tok(TEXTS, return_patch_lengths=True, return_tensors="pt", padding=True)
    assert batch["patch_lengths"].sum(1).tolist() == (batch["attention_mask"].sum(1) + 1).tolist()
    with torch.no_grad():
        given_lengths = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                              patch_lengths=batch["patch_lengths"]).logits
        self_patched = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(given_lengths, self_patched, atol=0, rtol=0)
    single = tok(TEXTS[0], return_patch_lengths=True)
    assert single["patch_lengths"] == [n for n in batch["patch_lengths"][0].tolist() if n > 0]
    listed = tok(TEXTS, return_patch_lengths=True)["patch_lengths"]  # python lists, rows of different lengths
    assert listed == [[n for n in row if n > 0] for row in batch["patch_lengths"].tolist()]


def test_ragged_rows_as_tensors_need_padding_and_then_patch_lengths_are_zero_padded_on_the_right(tmp_path):
    _checkpoint(tmp_path, has_patcher=True)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="padding=True"):
        tok(TEXTS, return_patch_lengths=True, return_tensors="pt")
    lengths = tok(TEXTS, return_patch_lengths=True, return_tensors="pt", padding=True)["patch_lengths"]
    alone = [tok(text, return_patch_lengths=True)["patch_lengths"] for text in TEXTS]
    assert lengths.shape == (len(TEXTS), max(len(row) for row in alone))
    for row, own in zip(lengths.tolist(), alone, strict=True):
        assert row == own + [0] * (lengths.shape[1] - len(own))


def test_special_token_names_agree_across_tokenizer_shipped_config_and_readme():
    """0 = BOE / pad `<pad>`, 1 = BOS `<s>`, 2 = EOS `</s>`, 3 = BPE delimiter / unk `<unk>`, everywhere."""
    import json
    import re
    from pathlib import Path

    from blt_hf import BLTConfig

    repo = Path(__file__).resolve().parent.parent
    shipped_dir = repo / "models" / "blt-hf-small-en"
    names = {0: "<pad>", 1: "<s>", 2: "</s>", 3: "<unk>"}
    for tokenizer in (BLTTokenizer(), AutoTokenizer.from_pretrained(shipped_dir)):
        assert tokenizer.convert_ids_to_tokens(list(names)) == list(names.values())
        assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
            0, 1, 2, 3)
    shipped = json.loads((shipped_dir / "tokenizer_config.json").read_text())
    assert {int(i): entry["content"] for i, entry in shipped["added_tokens_decoder"].items()} == names
    config = BLTConfig.from_pretrained(shipped_dir)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)
    for document in ("README.md", "MODEL_CARD.md"):
        text = (repo / document).read_text(encoding="utf-8").replace("\n", " ")
        for number, role in ((0, "BOE, also the pad id"), (1, "BOS"), (2, "EOS"), (3, "BPE delimiter")):
            assert re.search(rf"{number} = [^;]*{role}[^;]*`{re.escape(names[number])}`", text), (document, number)


def test_checkpoint_holds_one_copy_of_the_entropy_model(tmp_path):
    _checkpoint(tmp_path)
    weight_files = [f for f in os.listdir(tmp_path) if f.endswith((".safetensors", ".bin", ".pt"))]
    assert weight_files == ["model.safetensors"]


def test_patch_lengths_without_a_checkpoint_explain_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="attach_model"):
        BLTTokenizer()(["abc"], return_patch_lengths=True)


def test_tokenizer_loads_with_remote_code_where_blt_hf_is_not_importable(tmp_path):
    _checkpoint(tmp_path / "ckpt")
    expected = BLTTokenizer.from_pretrained(tmp_path / "ckpt")(TEXTS, return_patch_lengths=True)
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["blt_hf"] = None
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True)
        out = tok({TEXTS!r}, return_patch_lengths=True)
        print(json.dumps({{"ids": out["input_ids"], "lengths": out["patch_lengths"], "module": type(tok).__module__}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["module"].startswith("transformers_modules")
    assert out["ids"] == expected["input_ids"] and out["lengths"] == expected["patch_lengths"]


def test_a_checkpoint_loaded_in_bf16_patches_like_its_fp32_tokenizer(tmp_path):
    _checkpoint(tmp_path, variant="entropy", has_patcher=True)
    low = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert low.model.patcher.embed_tokens.weight.dtype == torch.float32  # kept fp32 on load
    assert low.model.local_encoder.embed_tokens.weight.dtype == torch.bfloat16
    batch = AutoTokenizer.from_pretrained(tmp_path)(TEXTS, return_patch_lengths=True, return_tensors="pt",
                                                    padding=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        own = low(batch["input_ids"], attention_mask=batch["attention_mask"], output_patch_lengths=True)
    width = batch["patch_lengths"].shape[1]
    assert torch.equal(own.patch_lengths[:, :width], batch["patch_lengths"])
    assert (own.patch_lengths[:, width:] == 0).all()
