"""Shared pieces of the benchmark scripts: machine header, timing, texts, the 70M benchmark configuration.

Every benchmark prints a human-readable table and, as its very last stdout line, one compact JSON document.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
LICENSE_TEXTS = [
    f"/usr/share/common-licenses/{name}" for name in ("GPL-3", "Apache-2.0", "GFDL-1.3", "Artistic", "BSD")
]
SEPARATORS = b" \n\t.,;:!?()"

# The 70M benchmark configuration of transformers' Blt (shared/reference/transformers-blt.md, section 3).
TRANSFORMERS_BENCH_CONFIG = dict(
    vocab_size=260, max_position_embeddings=8192, patch_in_forward=True, patching_mode="entropy", patch_size=4,
    patching_threshold=1.335442066192627, max_patch_length=None, cross_attn_k=2, local_attention_window_len=512,
    encoder_hash_byte_group_size=[3, 4, 5, 6, 7, 8], encoder_hash_byte_group_vocab=30000,
    encoder_hash_byte_group_nb_functions=1,
    patcher_config=dict(vocab_size=260, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=768, max_position_embeddings=8192, sliding_window=512),
    encoder_config=dict(vocab_size=260, hidden_size=256, hidden_size_global=512, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=768, max_position_embeddings=8192, cross_attn_k=2),
    decoder_config=dict(vocab_size=260, hidden_size=256, hidden_size_global=512, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=768, max_position_embeddings=8192, cross_attn_k=2),
    global_config=dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=1536,
                       max_position_embeddings=8192),
    bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, use_cache=False,
)


def machine_header() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    import transformers

    return {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": commit.stdout.strip() or None,
    }


def license_text() -> bytes:
    """77,072 bytes of real English: the Debian license texts (package base-files, on every Debian system)."""
    return b"".join(Path(path).read_bytes() for path in LICENSE_TEXTS)


def byte_rows(text: bytes, batch: int, length: int) -> torch.Tensor:
    """`batch` consecutive slices of `text` as ids (byte + 4), each starting with BOS = 1."""
    need = batch * (length - 1)
    repeated = (text * (need // len(text) + 1))[:need]
    body = torch.tensor(list(repeated), dtype=torch.long).view(batch, length - 1) + 4
    return torch.cat((torch.ones(batch, 1, dtype=torch.long), body), dim=1)


def space_like_patch_lengths(ids: torch.Tensor) -> torch.Tensor:
    """Causal synthetic patches for random-weight models: a new patch starts after a space or punctuation byte.

    Official convention (lengths sum to n + 1, zero right-padded); byte 0 is a patch of its own.
    """
    from blt_hf import patch_lengths_from_starts

    separator = torch.isin(ids, torch.tensor(list(SEPARATORS)) + 4)
    batch, length = ids.shape
    starts = torch.zeros(batch, length + 1, dtype=torch.bool)
    starts[:, :2] = True
    starts[:, 2:] = separator[:, 1:]
    return patch_lengths_from_starts(starts, torch.full((batch,), length))


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    """Measured fp32 matmul throughput (the machine's practical peak for model FLOP utilisation)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def peak_rss_mb() -> float:
    """Highest resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemorySampler:
    """Peak resident memory while the `with` block runs, above the memory at its start (sampled every 5 ms)."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.process, self.interval = psutil.Process(), interval
        self.start_mb = self.peak_mb = 0.0

    def _sample(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.process.memory_info().rss / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self):
        import gc
        import threading

        gc.collect()
        self.start_mb = self.peak_mb = self.process.memory_info().rss / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def extra_mb(self) -> float:
        return self.peak_mb - self.start_mb


def run_worker(script: str, args: list[str], timeout: int = 3600) -> dict:
    """Run `script --worker ...` in a fresh process (clean peak memory) and return its last-line JSON."""
    result = subprocess.run(
        [sys.executable, script, "--worker", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    if result.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(f"{r.get(c, '')}") for r in rows)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    print("-+-".join("-" * widths[c] for c in columns))
    for row in rows:
        print(" | ".join(f"{row.get(c, '')}".ljust(widths[c]) for c in columns))


def emit(result: dict) -> None:
    """The last stdout line: one compact JSON document."""
    print(json.dumps(result, separators=(",", ":")), flush=True)


def stdlib_text(num_bytes: int) -> bytes:
    """At least `num_bytes` of real text: the Python standard library's .py sources, in a fixed order."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= num_bytes:
            break
    if total < num_bytes:
        raise RuntimeError(f"only {total} bytes of standard library sources found")
    return b"".join(chunks)[:num_bytes]
