"""Metrics shared by the blt_* multiple-choice tasks: acc, acc_norm (per character), acc_bytes (per byte) and the
bits per byte of the gold continuation. lm-eval imports this file through `!function utils.process_multiple_choice`."""

import math


def process_multiple_choice(doc, results):
    lls = [ll for ll, _ in results]
    choices = [" " + c for c in doc["choices"]]
    gold = int(doc["gold"])
    best = max(range(len(lls)), key=lambda i: lls[i])
    best_chars = max(range(len(lls)), key=lambda i: lls[i] / len(choices[i]))
    best_bytes = max(range(len(lls)), key=lambda i: lls[i] / len(choices[i].encode("utf-8")))
    return {
        "acc": float(best == gold),
        "acc_norm": float(best_chars == gold),
        "acc_bytes": float(best_bytes == gold),
        "bits_per_byte": (lls[gold], len(choices[gold].encode("utf-8"))),
    }


def process_lambada(doc, results):
    ll, is_greedy = results[0]
    return {"acc": float(is_greedy), "bits_per_byte": (ll, len(doc["continuation"].encode("utf-8")))}


def bits_per_byte(items):
    """Aggregate (loglikelihood, bytes) pairs: -sum(ll) / sum(bytes) / ln 2."""
    return -sum(ll for ll, _ in items) / sum(n for _, n in items) / math.log(2)
