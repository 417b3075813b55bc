"""Evaluation of encoder/decoder pairs on the same tasks.

tasks     task registry, loaders over installed offline data, suites
metrics   accuracy variants, nDCG/recall/MRR, intervals
pooling   sentence embeddings (mean / CLS / last-token pooling)
score     log-likelihood (decoder), pseudo-log-likelihood and masked filling (encoder), greedy decoding
finetune  the one fine-tuning loop (AdamW, warmup then linear decay) that classify and retrieve share
classify  linear probe and fine-tuning
retrieve  embedding retrieval and contrastive fine-tuning
kinds     one scoring function per task kind, `run_task`
result    `TaskResult` / `Score`: one task's result and its JSON form
plan      what a comparison evaluates (members, tags, cross-objective runs, baselines), from folders alone
runner    execution: `evaluate_model`, `run_plan`, `compare_run`, `compare_models`
report    report.md, results.json, plots
"""
