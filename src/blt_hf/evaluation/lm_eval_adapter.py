"""lm-evaluation-harness for BLT.

Any saved blt_hf folder works with the stock harness and no fork:

    lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True --tasks hellaswag ...

This module also registers a `blt_hf` model type (importing it is enough; `blt-hf lm-eval ...` runs the harness
CLI with it registered):

    blt-hf lm-eval --model blt_hf --model_args pretrained=DIR,max_batch_bytes=65536 --tasks ...

It scores exactly like the `hf` backend, with two BLT-specific changes: batches are sized by a byte budget
(`max_batch_bytes`: rows per batch = budget // the longest row, recomputed as requests get shorter; for
generation the longest row is the longest context plus its `max_gen_toks`, for rolling loglikelihoods the
longest window), and scoring forwards skip building a generation cache. `max_length` and `max_gen_toks` count
bytes.
"""

from __future__ import annotations

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import normalize_gen_kwargs


@register_model("blt_hf")
class BLTLM(HFLM):
    def __init__(self, pretrained, max_batch_bytes: int | str = 32768, batch_schedule: int = 8, **kwargs):
        import blt_hf  # noqa: F401  (registers the Auto classes)

        self.max_batch_bytes = int(max_batch_bytes)
        self._longest_row = None  # while generating or rolling: bytes in the longest row of the requests
        kwargs.setdefault("backend", "causal")
        kwargs.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
        kwargs["batch_size"] = f"auto:{int(batch_schedule)}"
        super().__init__(pretrained=pretrained, **kwargs)

    def _detect_batch_size(self, requests=None, pos: int = 0) -> int:
        """Rows per batch from the byte budget (no out-of-memory probing)."""
        if requests:
            _, context, continuation = requests[pos]
            longest = len((context + continuation)[-(self.max_length + 1) :])
        else:
            longest = self._longest_row or self.max_length
        return max(1, min(self.max_batch_size, self.max_batch_bytes // max(longest, 1)))

    def _generation_row_bytes(self, context: str, gen_kwargs: dict) -> int:
        """Bytes in a generation row: the (left-truncated) encoded context plus the bytes it may generate."""
        max_gen_toks = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)["max_gen_toks"]
        return min(len(self.tok_encode(context)), self.max_length - max_gen_toks) + max_gen_toks

    def _with_longest_row(self, run, requests, row_bytes, disable_tqdm):
        """`run(requests)` with `_detect_batch_size()` sizing batches for the longest of their rows."""
        self._longest_row = max((row_bytes(*request.args) for request in requests), default=None)
        try:
            return run(requests, disable_tqdm=disable_tqdm)
        finally:
            self._longest_row = None

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """The `hf` generation, with rows per batch sized from the longest context + max_gen_toks."""
        return self._with_longest_row(super().generate_until, requests, self._generation_row_bytes, disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The `hf` rolling loglikelihoods, with rows per batch sized from the longest window."""
        def window_bytes(string: str) -> int:
            return min(len(self.tok_encode(string)), self.max_length)  # prefix token + all tokens but the last

        return self._with_longest_row(super().loglikelihood_rolling, requests, window_bytes, disable_tqdm)

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        with torch.no_grad():
            return self.model(inps, use_cache=False, return_dict=True).logits


def main(argv=None) -> None:
    """The lm-eval CLI with the `blt_hf` model type registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm_eval", *argv]
    cli_evaluate()
