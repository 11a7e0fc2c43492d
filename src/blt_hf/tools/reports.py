"""Reports on a checkpoint's patching, shared by the command line and the demo.

`patch_report` / `show_report` / `plot_report`: one text's patches and per-byte entropies; `calibrate_threshold`
and `bytes_per_patch`: the entropy threshold that gives a target mean patch size.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..configuration_blt_hf import BYTE_OFFSET
from ..patching import (
    PatchingRule,
    PatchingState,
    compute_patch_lengths,
    patch_lengths_from_starts,
    row_positions,
    row_start_flags,
)
from .extras import require

REPO = Path(__file__).resolve().parents[3]
DEFAULT_MODEL = REPO / "models" / "blt-hf-smollm2-stage1"  # byte-ified SmolLM2: a delta, assembled on first use
SMALL_MODEL = REPO / "models" / "blt-hf-small-en"  # the small BLT trained from scratch, with an entropy model


def default_model() -> str | None:
    """$BLT_HF_MODEL, else the bundled small BLT with an entropy model (models/blt-hf-small-en in a source checkout;
    the entropy reports need its entropy model), else None."""
    if os.environ.get("BLT_HF_MODEL"):
        return os.environ["BLT_HF_MODEL"]
    return str(SMALL_MODEL) if (SMALL_MODEL / "config.json").is_file() else None


def patch_report(model, text: str) -> dict:
    """Patches and per-byte entropies of `text` (a string, or raw bytes) under the model's patching rule."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    ids = torch.tensor([[1] + [b + BYTE_OFFSET for b in data]])
    base = model.model
    rule = PatchingRule.from_config(base.config)
    lengths, entropies = compute_patch_lengths(ids, None, rule, base.patcher)
    if entropies is None and base.patcher is not None:
        with torch.no_grad():
            entropies = base.patcher(ids).entropies
    data = bytes(int(i) - BYTE_OFFSET for i in ids[0, 1:])
    lengths = [int(n) for n in lengths[0] if n > 0]
    patches, position = [], 0
    for n in lengths:
        patches.append((position, min(position + n, len(data) + 1)))
        position += n
    report = {
        "bytes": data,
        "patches": patches,  # [start, end) in positions of ids (0 = BOS); the last may include the virtual position
        "lengths": lengths,
        "entropies": None if entropies is None else entropies[0].tolist(),
        "threshold": rule.threshold if rule.needs_entropies else None,
        "threshold_add": rule.threshold_add if rule.needs_entropies else None,
        "monotonicity": rule.monotonicity if rule.needs_entropies else False,
        "mode": rule.mode,
    }
    report["patch_count"] = patch_count(report)
    return report


def patch_count(report: dict) -> int:
    """Patches holding bytes of the row: BOS's own patch counts, a last patch holding only "the next byte" does not."""
    return sum(1 for start, _ in report["patches"] if start <= len(report["bytes"]))


def patch_summary(report: dict) -> str:
    """The one sentence on patch counts that the printed report and the plot share."""
    next_opens = report["patches"][-1][0] == len(report["bytes"]) + 1
    return (f"{len(report['bytes'])} bytes + BOS in {patch_count(report)} patches (BOS's own patch included"
            + ("; the next byte starts a new one)" if next_opens else ")"))


def show_report(report: dict) -> str:
    """The report as text: the patches between bars, then one line per byte with its entropy."""
    data = report["bytes"]

    def piece(start, end):
        body = (b"<s>" if start == 0 else b"") + data[max(start - 1, 0) : max(end - 1, 0)]
        return body.decode("utf-8", "replace")

    shown = report["patches"][: patch_count(report)]
    lines = ["|" + "|".join(piece(s, e) for s, e in shown) + "|"]
    lines.append(
        patch_summary(report) + f"; {report['mode']} patching"
        + (f", threshold {report['threshold']:.4f} nats" if report["threshold"] is not None else "")
    )
    if report["entropies"] is not None:
        starts = {s for s, _ in report["patches"]}
        lines.append("byte      entropy before it (nats)   starts a patch")
        for pos, value in enumerate(report["entropies"], start=1):
            char = repr(bytes([data[pos - 1]]))[2:-1] if pos <= len(data) else "(next)"
            lines.append(f"{char:<8}  {value:>10.4f}                 {'*' if pos in starts else ''}")
    return "\n".join(lines)


def plot_report(report: dict, path: str) -> None:
    """Entropy of the next byte at each position, the threshold and the patch boundaries (after the paper's Fig. 4)."""
    matplotlib = require("matplotlib")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if report["entropies"] is None:
        raise ValueError("this model has no entropy model to plot")
    # the value at byte j is H(j-1): the entropy model's uncertainty about byte j before seeing it
    entropies = report["entropies"]
    labels = [bytes([b]).decode("latin-1") if 32 <= b < 127 else f"\\x{b:02x}" for b in report["bytes"]] + ["next"]
    x = list(range(1, len(entropies) + 1))
    width = max(6.0, 0.22 * len(entropies))
    fig, ax = plt.subplots(figsize=(width, 3.2))
    ax.plot(x, entropies, marker="o", markersize=3, linewidth=1, color="tab:blue", label="entropy before the byte")
    # monotonic and combined rules threshold the rise H(j-1) - H(j-2) (from byte 3 on): plot it where it is used
    rise_threshold = report["threshold"] if report["monotonicity"] else report["threshold_add"]
    if rise_threshold is not None:
        rises = [b - a for a, b in zip(entropies[:-1], entropies[1:], strict=True)]
        ax.plot(x[1:], rises, marker=".", markersize=3, linewidth=0.8, color="tab:orange", label="entropy rise")
        ax.axhline(rise_threshold, color="tab:orange", linestyle=":", linewidth=1, label="rise threshold")
    if report["threshold"] is not None and not report["monotonicity"]:
        ax.axhline(report["threshold"], color="tab:red", linestyle="--", linewidth=1, label="threshold")
    for start, _ in report["patches"][1:]:
        ax.axvline(start - 0.5, color="tab:gray", linewidth=0.8, alpha=0.7)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_xlim(0.5, len(entropies) + 0.5)
    ax.set_ylabel("nats")
    ax.set_title(patch_summary(report), fontsize=9)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def read_byte_rows(files: list[str], row_bytes: int, max_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Files' bytes as BOS-led rows of at most `row_bytes` ids (right-padded) and their mask, up to `max_bytes`."""
    rows = []
    total = 0
    for name in files:
        data = Path(name).read_bytes()
        for start in range(0, len(data), row_bytes - 1):
            chunk = data[start : start + row_bytes - 1]
            if not chunk or total >= max_bytes:
                break
            rows.append([1] + [b + BYTE_OFFSET for b in chunk])
            total += len(chunk)
    if not rows:
        raise ValueError("no text to calibrate on")
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask


def bytes_per_patch(rule: PatchingRule, ids, mask, entropies) -> float:
    """Mean patch size in real bytes (BOS excluded) under `rule`, for precomputed entropies."""
    valid = mask.bool()
    positions = row_positions(valid)
    starts, next_starts, _ = rule(positions, valid, ids, entropies, PatchingState.initial(ids.shape[0], ids.device))
    lengths = patch_lengths_from_starts(row_start_flags(starts, next_starts, positions, valid), valid.sum(1))
    patches = int((lengths > 0).sum()) - ids.shape[0]  # the BOS patch of each row does not count
    return float(valid.sum() - ids.shape[0]) / max(patches, 1)


def calibrate_threshold(
    model, files, target: float, rule_name: str = "global", threshold_add: float | None = None,
    row_bytes: int = 1024, max_bytes: int = 2_000_000, batch_size: int = 16,
) -> tuple[float, float]:
    """Bisect the entropy threshold so that the mean patch size on the files' text is `target` bytes."""
    base = model.model
    if base.patcher is None:
        raise ValueError("calibration needs a model with an entropy model (has_patcher=True)")
    ids, mask = read_byte_rows(files, row_bytes, max_bytes)
    chunks = []
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch_size):
            chunks.append(base.patcher(ids[start : start + batch_size], mask[start : start + batch_size]).entropies)
    entropies = torch.cat(chunks)
    rule = PatchingRule.from_config(
        base.config, mode="entropy", monotonicity=rule_name == "monotonic",
        threshold_add=threshold_add if rule_name == "combined" else None,
    )
    if rule_name == "combined" and threshold_add is None:
        raise ValueError("--rule combined needs --threshold-add")

    def size(threshold):
        return bytes_per_patch(PatchingRule(**{**rule.__dict__, "threshold": threshold}), ids, mask, entropies)

    low, high = -float(entropies.max()) - 1.0, float(entropies.max()) + 1.0
    if not size(low) <= target <= size(high):
        raise ValueError(
            f"target {target} bytes per patch is outside what this rule reaches on this text "
            f"({size(low):.3f} .. {size(high):.3f})"
        )
    for _ in range(60):
        middle = (low + high) / 2
        if size(middle) < target:
            low = middle
        else:
            high = middle
    threshold = high
    return threshold, size(threshold)
