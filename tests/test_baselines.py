"""The byte-level Llama baseline: packed documents stay apart, it scores like plain Llama, and trains from the CLI."""

import json
import subprocess
import sys

import torch
from transformers import LlamaForCausalLM

from blt_hf.evaluation.metrics import bits_per_byte
from blt_hf.training.baselines import ByteLlamaForCausalLM, byte_llama_config
from blt_hf.training.data import pack_documents, text_dataset
from tests.test_trainer import ENV, corpus  # noqa: F401  (fixture)

DOCUMENTS = ["A first document.", "The second document is longer than the first one." * 3, "Third."]


def _models(seed=0):
    torch.manual_seed(seed)
    model = ByteLlamaForCausalLM(byte_llama_config("tiny")).eval()
    reference = LlamaForCausalLM(model.config).eval()
    reference.load_state_dict(model.state_dict())
    return model, reference


def _ids(text):
    return torch.tensor([[1] + [b + 4 for b in text.encode()]])


def test_packed_documents_get_the_logits_each_document_gets_alone_in_plain_llama():
    model, reference = _models()
    rows = pack_documents(text_dataset(dataset=_dataset()), row_length=256)
    row = rows[0]
    ids = torch.tensor([row["input_ids"]])
    with torch.no_grad():
        packed = model(input_ids=ids, attention_mask=torch.tensor([row["attention_mask"]]),
                       position_ids=torch.tensor([row["position_ids"]])).logits[0]
        start = 0
        for doc in DOCUMENTS:
            alone = reference(_ids(doc)).logits[0]
            torch.testing.assert_close(packed[start : start + alone.shape[0]], alone, atol=1e-5, rtol=1e-5)
            start += alone.shape[0]
    assert start < 256  # the row ends in padding, which changed nothing


def test_bits_per_byte_of_packed_rows_is_plain_llamas_loss_on_each_document():
    model, reference = _models(1)
    rows = pack_documents(text_dataset(dataset=_dataset()), row_length=64)  # documents split across rows
    result = bits_per_byte(model, rows, batch_size=2)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids, positions = torch.tensor(row["input_ids"]), torch.tensor(row["position_ids"])
            starts = [i for i in range(len(ids)) if positions[i] == 0 and row["attention_mask"][i]] + [
                sum(row["attention_mask"])]
            for begin, end in zip(starts, starts[1:], strict=False):
                piece = ids[begin:end][None]
                if piece.shape[1] > 1:
                    total += reference(piece, labels=piece).loss.item() * (piece.shape[1] - 1)
                    count += piece.shape[1] - 1
    assert result["bytes"] == count
    assert abs(result["nats_per_byte"] - total / count) < 1e-5


def test_train_byte_llama_cli_saves_a_plain_llama_and_its_held_out_history(corpus, tmp_path):  # noqa: F811
    out = tmp_path / "llama"
    command = [sys.executable, "-m", "blt_hf.tools.cli", "train-byte-llama", "--train", str(corpus / "train.txt"),
               "--eval", str(corpus / "eval.txt"), "--preset", "tiny", "--row-length", "128", "--batch-size", "4",
               "--steps", "8", "--eval-steps", "4", "--save-steps", "4", "--logging-steps", "2",
               "--warmup-steps", "1", "--learning-rate", "3e-3", "--output", str(out)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [4, 8]
    assert metrics["train_losses"][-1] < metrics["train_losses"][0]
    assert metrics["eval_bits_per_byte"] < 8
    assert isinstance(LlamaForCausalLM.from_pretrained(out / "final"), LlamaForCausalLM)


def _dataset():
    from datasets import Dataset

    return Dataset.from_dict({"text": DOCUMENTS})
