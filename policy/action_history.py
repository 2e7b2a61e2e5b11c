"""Past actions of each triplet, rebuilt from the action chunks of the earlier anchors.

A triplet carries the chunk of C actions from its anchor step t onwards, not the actions before
it. The reader yields an episode's anchors in order (every `stride` steps), so by the time the
triplet of anchor t arrives the chunks of anchors t - stride, t - 2 stride, ... have shown every
step s < t with s >= t - stride * k whenever stride <= C. This generator remembers those
actions, per episode, and attaches the H steps before t:

    past_actions        H A  float32  actions of steps t - H .. t - 1 (dataset units); 0 where unknown
    past_actions_valid  H    bool     the step exists in the episode and a chunk showed its action

Steps before the episode's start, or never covered by a valid chunk entry, stay invalid: nothing
is invented. At acting time the policy keeps the actions it executed instead (the same quantity).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import numpy as np

PAST_ACTIONS = "past_actions"
PAST_ACTIONS_VALID = "past_actions_valid"


def with_action_history(triplets: Iterable, history: int) -> Iterator:
    """The same triplets, in the same order, each with meta PAST_ACTIONS (H A) and
    PAST_ACTIONS_VALID (H) for H = `history`."""
    episode, seen = None, {}  # seen: step -> action A of the current episode
    for tr in triplets:
        if tr.episode_id != episode:
            episode, seen = tr.episode_id, {}
        t = int(tr.anchor)
        chunk = np.asarray(tr.action_chunk, np.float32)  # C A
        A = chunk.shape[-1]
        past = np.zeros((history, A), np.float32)
        valid = np.zeros(history, bool)
        for i, s in enumerate(range(t - history, t)):
            if s in seen:
                past[i], valid[i] = seen[s], True
        for j in np.flatnonzero(np.asarray(tr.action_chunk_valid, bool) & np.all(np.isfinite(chunk), axis=-1)):
            seen[t + int(j)] = chunk[j]
        for s in [s for s in seen if s < t - history]:  # only the last H steps before a later anchor matter
            del seen[s]
        yield dataclasses.replace(tr, meta={**tr.meta, PAST_ACTIONS: past, PAST_ACTIONS_VALID: valid})
