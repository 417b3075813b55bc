"""Evaluation of encoder/decoder pairs on the same tasks.

tasks    task registry, loaders over installed offline data, suites
metrics  accuracy variants, nDCG/recall/MRR, intervals
pooling  sentence embeddings (mean / CLS / last-token pooling)
score    log-likelihood (decoder), pseudo-log-likelihood and masked filling (encoder), greedy decoding
classify linear probe and fine-tuning
retrieve embedding retrieval and contrastive fine-tuning
runner   `evaluate_model`, `compare_run`
report   report.md, results.json, plots
"""
