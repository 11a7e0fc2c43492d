"""Exact self-speculative decoding for `BLTForCausalLM.generate(..., speculative_bytes=k)`.

Each step drafts k bytes with the local stacks alone (`BLTModel.draft_step`: the local encoder and decoder, reading
the last global patch state, as the Fast BLT paper's BLT-S), rolls the cache back to before the drafts
(`BLTCache.snapshot` / `restore`), runs the k + 1 bytes [last byte, drafts] through the full model as one chunk
continuing the cache, accepts the longest agreeing prefix plus the next byte, and crops the cache to what plain
decoding would hold (`BLTCache.crop`).

* Greedy: a draft is accepted when it is the model's argmax, so the output is plain greedy decoding's.
* Sampling: the speculative-sampling rule (Leviathan et al., 2023; Chen et al., 2023): draft d with draft
  probability q(d) is kept with probability min(1, p(d) / q(d)); at the first rejection the next byte is drawn from
  the normalised max(p - q, 0); after k acceptances from p. The output then follows the model's distribution.
* A batch stays column-aligned: every row keeps as many bytes as the row that accepted fewest (the other rows'
  later accepted bytes are valid samples that are simply drafted again), so left-padded rows and the cache's
  shared window spans never change meaning.

EOS, `max_length` and any other stopping criterion stop each row at the same byte as plain decoding (later bytes of
a finished row become padding).
"""

from __future__ import annotations

import torch
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria
from transformers.generation.utils import GenerateDecoderOnlyOutput

MAX_DRAFT = 32  # the adaptive schedule's ceiling


def check_speculative_bytes(value) -> int | str:
    """`speculative_bytes`: a positive int (bytes drafted per step) or "auto" (adapted to the acceptance)."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"speculative_bytes must be a positive int (bytes drafted per step) or 'auto', got {value!r}")


def process_columns(logits_processor, sequences: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Apply the logits processors to logits [B, c, V] predicting the bytes after the last c columns of
    `sequences` (processors read the prefix each column predicts from)."""
    if len(logits_processor) == 0:
        return logits
    columns = logits.shape[1]
    start = sequences.shape[1] - columns + 1
    return torch.stack(
        [logits_processor(sequences[:, : start + j], logits[:, j].clone()) for j in range(columns)], dim=1
    )


def speculative_acceptance(target_probs, draft_probs, drafts):
    """The speculative-sampling rule per row: target_probs [B, k + 1, V], draft_probs [B, k, V] (the distributions
    the drafts [B, k] were drawn from). Returns (accepted [B]: leading drafts kept, replacement [B, k + 1]: the byte
    each position takes if it is the first one not kept: a draw from max(p - q, 0), or from p after all k)."""
    batch, k = drafts.shape
    p = target_probs[:, :k].gather(2, drafts[..., None]).squeeze(2)
    q = draft_probs.gather(2, drafts[..., None]).squeeze(2)
    kept = torch.rand_like(p) * q <= p  # u <= p / q without dividing by a zero q
    accepted = kept.long().cumprod(1).sum(1)
    residual = (target_probs[:, :k] - draft_probs).clamp(min=0)
    total = residual.sum(-1, keepdim=True)
    residual = torch.where(total > 0, residual / total.clamp(min=torch.finfo(total.dtype).tiny), target_probs[:, :k])
    distributions = torch.cat((residual, target_probs[:, k:]), dim=1)
    replacement = torch.multinomial(distributions.flatten(0, 1), 1).view(batch, k + 1)
    return accepted, replacement


def _finish_rows(new, unfinished, eos_ids, pad_id, extra_criteria, sequences, scores):
    """Padding after each row's stop: new [B, n] bytes appended to `sequences`; returns (new, unfinished after)."""
    done_before = ~unfinished.bool()[:, None].expand_as(new).clone()
    stops = torch.zeros_like(new, dtype=torch.bool)
    if eos_ids is not None:
        stops = torch.isin(new, eos_ids)
    if extra_criteria:  # criteria that read the whole sequence: asked at every new byte, as plain decoding does
        full = torch.cat((sequences, new), dim=1)
        base = sequences.shape[1]
        stops = stops | torch.stack(
            [extra_criteria(full[:, : base + j + 1], scores) for j in range(new.shape[1])], dim=1
        )
    stopped_before = (stops.long().cumsum(1) - stops.long()) > 0
    pad = done_before | stopped_before
    if pad_id is not None:
        new = torch.where(pad, pad_id, new)
    finished = done_before[:, 0] | stops.any(1)
    if bool(finished.all()):  # plain decoding stops right after the last row's stop
        first_stop = torch.where(stops.any(1), stops.long().argmax(1), -1)
        new = new[:, : int(first_stop.max()) + 1]
    return new, (~finished).long()


def self_speculative_decoding(model, input_ids, logits_processor, stopping_criteria, generation_config,
                              synced_gpus=False, speculative_bytes=4, speculative_streamer=None, **model_kwargs):
    """The decoding loop that `BLTForCausalLM.generate` runs (as transformers' `custom_generate`) when given
    `speculative_bytes`. Statistics of the last call: `model.speculative_stats`."""
    cache = model_kwargs.get("past_key_values")
    if cache is None or not model_kwargs.get("use_cache", True):
        raise ValueError("speculative_bytes needs the cache: do not pass use_cache=False")
    config = generation_config
    if config.output_attentions or config.output_hidden_states:
        raise ValueError("speculative_bytes does not return attentions or hidden states")
    do_sample = bool(config.do_sample)
    eos_ids = config._eos_token_tensor
    pad_id = config._pad_token_tensor if eos_ids is not None else None  # as transformers: pad only with an EOS
    extra = type(stopping_criteria)(
        [c for c in stopping_criteria if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria))]
    )
    max_length = stopping_criteria.max_length if stopping_criteria.max_length is not None else config.max_length
    want_scores = config.return_dict_in_generate and config.output_scores
    want_logits = config.return_dict_in_generate and config.output_logits
    scores, raw_logits = [], []
    adaptive = speculative_bytes == "auto"
    k = 4 if adaptive else speculative_bytes
    stats = dict(steps=0, drafted=0, accepted=0, new_bytes=0, verify_passes=0, draft_passes=0, uneven_steps=0)
    prompt_length = input_ids.shape[1]

    def choose(processed):
        if do_sample:
            return torch.multinomial(torch.softmax(processed, dim=-1), 1).squeeze(1)
        return processed.argmax(-1)

    outputs = model._prefill(input_ids, config, model_kwargs)
    logits = outputs.logits[:, -1:].float()
    processed = process_columns(logits_processor, input_ids, logits)
    if want_scores:
        scores.append(processed[:, 0])
    if want_logits:
        raw_logits.append(logits[:, 0])
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    new, unfinished = _finish_rows(choose(processed[:, 0])[:, None], unfinished, eos_ids, pad_id, extra,
                                   input_ids, None)
    input_ids = torch.cat((input_ids, new), dim=1)
    if speculative_streamer is not None:
        speculative_streamer.put(new.cpu())
    del outputs

    while bool(unfinished.any()) and input_ids.shape[1] < max_length:
        budget = max_length - input_ids.shape[1]  # bytes still to generate
        drafts_wanted = min(k, budget - 1)
        last = input_ids[:, -1:]
        drafts, draft_probs = [], []
        if drafts_wanted > 0:  # draft with the local stacks, then forget the drafts
            snapshot = cache.snapshot()
            byte, sequence = last, input_ids
            for _ in range(drafts_wanted):
                hidden = model.model.draft_step(byte, cache)
                draft_logits = process_columns(logits_processor, sequence, model.lm_head(hidden).float())[:, 0]
                if do_sample:
                    probs = torch.softmax(draft_logits, dim=-1)
                    draft_probs.append(probs)
                    byte = torch.multinomial(probs, 1)
                else:
                    byte = draft_logits.argmax(-1, keepdim=True)
                drafts.append(byte)
                sequence = torch.cat((sequence, byte), dim=1)
            readouts = cache.current_patch_readouts  # drafting never changes the current patch: keep them
            cache.restore(snapshot)
            cache.current_patch_readouts = readouts
            stats["draft_passes"] += drafts_wanted
        drafts = torch.cat(drafts, dim=1) if drafts else last[:, :0]
        cache.activate_past_recording()
        outputs = model(input_ids=torch.cat((last, drafts), dim=1), past_key_values=cache, use_cache=True,
                        return_dict=True)
        stats["verify_passes"] += 1
        logits = outputs.logits.float()
        processed = process_columns(logits_processor, torch.cat((input_ids, drafts), dim=1), logits)
        if do_sample:
            target = torch.softmax(processed, dim=-1)
            if drafts_wanted:
                accepted, replacement = speculative_acceptance(target, torch.stack(draft_probs, dim=1), drafts)
            else:
                accepted, replacement = drafts.new_zeros(drafts.shape[0]), torch.multinomial(target[:, 0], 1)
        else:
            replacement = processed.argmax(-1)
            accepted = (drafts == replacement[:, :drafts_wanted]).long().cumprod(1).sum(1)
        live = unfinished.bool() if pad_id is not None else torch.ones_like(unfinished, dtype=torch.bool)
        most, kept = torch.where(live, accepted, 0).max(), torch.where(live, accepted, drafts_wanted).min()
        kept, stats["uneven_steps"] = int(kept), stats["uneven_steps"] + int(most > kept)  # every row keeps `kept`
        next_byte = replacement[:, kept]  # rows that stopped accepting at `kept` (or the byte after all k)
        if kept < drafts_wanted:  # rows that accepted more keep their accepted draft
            next_byte = torch.where(accepted > kept, drafts[:, kept], next_byte)
        cache.crop(-(drafts_wanted - kept))
        new = torch.cat((drafts[:, :kept], next_byte[:, None]), dim=1)
        if want_scores:
            scores.extend(processed[:, : kept + 1].unbind(1))
        if want_logits:
            raw_logits.extend(logits[:, : kept + 1].unbind(1))
        new, unfinished = _finish_rows(new, unfinished, eos_ids, pad_id, extra, input_ids, None)
        input_ids = torch.cat((input_ids, new), dim=1)
        if speculative_streamer is not None:
            speculative_streamer.put(new.cpu())
        stats["steps"] += 1
        stats["drafted"] += drafts_wanted
        stats["accepted"] += kept
        if adaptive and drafts_wanted == k:
            k = min(k + 2, MAX_DRAFT) if kept == k else max(1, k - 1)
        del outputs

    cache.record_past, cache._records = False, []
    stats["new_bytes"] = input_ids.shape[1] - prompt_length
    model.speculative_stats = stats
    if speculative_streamer is not None:
        speculative_streamer.end()
    if config.return_dict_in_generate:
        return GenerateDecoderOnlyOutput(
            sequences=input_ids,
            scores=tuple(scores) if want_scores else None,
            logits=tuple(raw_logits) if want_logits else None,
            past_key_values=cache,
        )
    return input_ids
