"""Evaluation: bits per byte (`metrics`), FLOPs per byte (`flops`), the lm-eval backend (`lm_eval_adapter`) and the
noised / character suites (`robustness`)."""
