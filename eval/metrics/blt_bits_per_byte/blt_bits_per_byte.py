"""`evaluate` metric: bits per byte of texts under a BLT checkpoint.

    import evaluate
    metric = evaluate.load("eval/metrics/blt_bits_per_byte")        # a local path, no Hub access
    metric.compute(predictions=["some text", "more text"], model_id="path/to/blt_hf_checkpoint")
    # {'bits_per_byte': ..., 'nats_per_byte': ..., 'bytes': ...}

Each text is a document (BOS + its UTF-8 bytes); documents are packed into rows of `row_length` bytes and every
byte after a BOS is scored. Texts are never truncated: long ones continue in the next row behind a fresh BOS.
"""

import datasets
import evaluate

_DESCRIPTION = "Bits per byte (summed next-byte cross-entropy in bits / number of bytes) of texts under a BLT."
_KWARGS = """
Args:
    predictions (list of str): the texts to score.
    model_id (str): a blt_hf checkpoint folder (or Hub id).
    batch_size (int): rows per forward pass (default 8).
    row_length (int): bytes per packed row (default 2048).
Returns:
    bits_per_byte, nats_per_byte, bytes.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class BLTBitsPerByte(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, model_id, batch_size: int = 8, row_length: int = 2048):
        from transformers import AutoModelForCausalLM

        import blt_hf  # noqa: F401
        from blt_hf.evaluation.metrics import bits_per_byte
        from blt_hf.training.data import add_patch_lengths, pack_documents, text_dataset

        model = AutoModelForCausalLM.from_pretrained(model_id).eval()
        rows = pack_documents(text_dataset(dataset=datasets.Dataset.from_dict({"text": list(predictions)})),
                              row_length)
        return bits_per_byte(model, add_patch_lengths(rows, model), batch_size)
