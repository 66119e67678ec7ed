"""The training pipeline, written once for both backends: the engine (one level up) stays apart from it.

    tokenizer   characters <-> ids
    data        the corpora (embedded, WikiText), windows, SFT pairs and their answer mask
    rewards     the hand-written rewards of the RL stage
    sampling    temperature, top-k, the context crop, inverse-CDF draws
    backend     the seam: what a stage asks of a tensor library (numpy here, torch in minigpt_torch)
    stages      the training loop, pretraining and SFT
    rl          REINFORCE: rollouts, advantages, KL and entropy, diagnostics
    checkpoint  saving and loading a stage's weights, optimizer state and settings
    metrics     metrics.jsonl
    report      plots and report.md
    pipeline    the three stages in a row, with presets (what examples/run_all.py runs)
"""
