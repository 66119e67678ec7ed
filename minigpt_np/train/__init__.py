"""The training pipeline, written once for both backends: the engine (one level up) stays apart from it.

    tokenizer   characters <-> ids
    data        the corpora (embedded, WikiText), windows, SFT pairs and their answer mask
    rewards     the hand-written rewards of the RL stage
    readability does an answer read as language (real words, repeats)
    best_of_n   best-of-N, the baseline without training, and its KL
    sampling    temperature, top-k, the context crop, inverse-CDF draws
    backend     the seam: what a stage asks of a tensor library (numpy here, torch in minigpt_torch)
    stages      pretraining and SFT (the methods)
    rl          REINFORCE as its steps: rollouts, rewards, shaping, advantages, the loss, metrics
    runner      what every stage runs in: resume, Ctrl-C, checkpoints, logging, random streams
    evaluation  what every stage is measured by
    checkpoint  saving and loading a stage's weights, optimizer state and settings
    metrics     metrics.jsonl
    report      plots and report.md
    settings    every setting, the presets, their checks
    validation  the ranges of numeric settings, and one-line errors
    pipeline    the three stages in a row (what examples/run_all.py runs)
"""
