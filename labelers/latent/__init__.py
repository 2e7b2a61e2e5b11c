"""Latent action model (LAPA family): VQ tokens for the motion between frames t and t+gap.

    config.py      LAMConfig and the `small` / `paper` presets
    nsvq.py        noise-substitution VQ and LAPA's dead-code replacement schedule
    model.py       encoder (spatial + causal temporal transformer), NSVQ bottleneck, decoder
    data.py        frames of episodes as one store of (t, t+gap) pairs; synthetic moving squares
    train.py       seeded, checkpointed, resumable training loop
    checkpoint.py  safetensors checkpoints (weights; full training state)
    evaluate.py    codebook usage / perplexity, reconstruction PSNR, action probe

The pipeline-facing labeler is labelers.latent.labeler.LatentActionLabeler.
"""
