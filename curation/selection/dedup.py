"""Near-duplicate episode detection.

Each episode is summarised once, where it is decoded, by a small picklable
`Fingerprint` (a few hundred bytes); the job collects the fingerprints of all
episodes and calls `find_duplicates` once. Two kinds of duplicates:

    exact       same start frames (sha256 of the first `start_frames` primary
                frames, with their shape) and the same normalised language
    perceptual  primary-camera perceptual hashes (imagehash.phash, 64 bits each,
                of the first / middle / last frame) within `max_hamming` bits in
                total (Hamming distance over the 3 x 64 = 192 bits)

Scaling: exact duplicates are found by grouping on (start hash, language).
Perceptual candidates come from multi-index hashing: the 192-bit hash is cut
into `max_hamming + 1` bands; two hashes within `max_hamming` bits agree
exactly on at least one band (pigeonhole), so bucketing on each band finds
every pair within the distance (no misses) while comparing only episodes that
share a band (numpy popcount, vectorised over all buckets). Random-looking
hashes: 1e5 fingerprints take about 1.5 s here. Worst case: m episodes that all
share a band (one scene filmed over and over) cost m^2 / 2 comparisons.

Which episode of a group is kept is deterministic whatever the input order:
episodes are visited in provenance-key order and one is dropped when it is a
duplicate of an already-kept episode; the pair records the kept episode (exact
match first, then the smallest distance, then the smallest key).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np

from schemas.config import strict_from_dict
from schemas.episode import Episode

HASH_BITS = 64  # imagehash.phash with hash_size=8
_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.int32)


@dataclass(frozen=True)
class DedupConfig:
    enabled: bool = True
    exact: bool = True  # same start frames and language
    perceptual: bool = True  # perceptual hashes within max_hamming bits
    max_hamming: int = 10  # total bits over the hashed frames (3 x 64 by default)
    start_frames: int = 2  # frames hashed exactly for the "same start" test
    perceptual_same_language: bool = False  # also require equal language for perceptual pairs
    # Perceptual pairs must also have (nearly) the same action trajectory: copies of one recording
    # share their actions, while distinct demos of one task in a look-alike scene (simulation,
    # a fixed lab set-up) do not. Relative L2 distance of the segment-mean action signatures;
    # None switches the check off.
    max_action_distance: float | None = 0.1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "DedupConfig":
        return strict_from_dict(cls, d, "dedup option(s)")


@dataclass(frozen=True)
class Fingerprint:
    episode_id: str
    key: tuple  # (dataset, version, split, episode_index): deterministic tie-break, smallest is kept
    language: str  # normalised
    start_hash: str  # sha256 hex of the first frames + their shape
    phashes: tuple[int, ...]  # 64-bit perceptual hashes, first / middle / last frame
    num_steps: int
    actions: bytes = b""  # float16 ACTION_SEGMENTS x A segment means of the actions (A from len)

    def to_record(self) -> dict:
        """A JSON-able form, so that fingerprints cross process and file boundaries as data."""
        return {"episode_id": self.episode_id, "key": list(self.key), "language": self.language,
                "start_hash": self.start_hash, "phashes": [int(h) for h in self.phashes],
                "num_steps": int(self.num_steps), "actions": self.actions.hex()}

    @classmethod
    def from_record(cls, d: dict) -> "Fingerprint":
        return cls(d["episode_id"], tuple(d["key"]), d["language"], d["start_hash"], tuple(d["phashes"]),
                   d["num_steps"], bytes.fromhex(d["actions"]))


@dataclass(frozen=True)
class DuplicatePair:
    kept: str  # episode_id
    dropped: str  # episode_id
    kind: str  # "exact" | "perceptual"
    distance: int  # Hamming bits over the phashes (0 for exact)

    def to_dict(self) -> dict:
        return asdict(self)


def normalise_language(text: str) -> str:
    """Case-, accent-, punctuation- and whitespace-insensitive form of an instruction."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def _phash(frame: np.ndarray) -> int:
    import imagehash
    from PIL import Image

    h = imagehash.phash(Image.fromarray(frame), hash_size=8)
    return int(sum(1 << i for i, bit in enumerate(h.hash.flatten()) if bit))


ACTION_SEGMENTS = 8


def action_signature(actions: np.ndarray) -> bytes:
    """The action trajectory in ACTION_SEGMENTS segment means per dimension (float16 bytes):
    small, and comparable between episodes of different lengths."""
    a = np.nan_to_num(np.asarray(actions, dtype=np.float64))
    if a.ndim != 2 or a.shape[0] == 0:
        return b""
    segments = np.array_split(np.arange(a.shape[0]), ACTION_SEGMENTS)
    sig = np.stack([a[idx].mean(axis=0) if idx.size else a[-1] for idx in segments])  # S A
    return sig.astype(np.float16).tobytes()


def action_distance(a: bytes, b: bytes) -> float:
    """Distance of two action signatures: per action dimension the L2 difference relative to the
    larger of the two, RMS over dimensions (so a constant gripper channel cannot mask motion);
    inf when their dimensions differ, 0 when either is missing (no evidence against a duplicate)."""
    if not a or not b:
        return 0.0
    if len(a) != len(b):
        return float("inf")
    x = np.frombuffer(a, np.float16).astype(np.float64).reshape(ACTION_SEGMENTS, -1)  # S A
    y = np.frombuffer(b, np.float16).astype(np.float64).reshape(ACTION_SEGMENTS, -1)
    scale = np.maximum(np.maximum(np.linalg.norm(x, axis=0), np.linalg.norm(y, axis=0)), 1e-6)  # A
    return float(np.sqrt(np.mean((np.linalg.norm(x - y, axis=0) / scale) ** 2)))


def fingerprint(episode: Episode, cfg: DedupConfig | None = None) -> Fingerprint:
    """Fingerprint of an episode's primary camera and language (cheap: 3 phashes + one sha256)."""
    cfg = cfg or DedupConfig()
    frames = episode.frames[episode.primary_camera]  # T H W 3 uint8
    T = frames.shape[0]
    start = np.ascontiguousarray(frames[: cfg.start_frames])
    digest = hashlib.sha256(repr(start.shape).encode())
    digest.update(start.tobytes())
    picks = sorted({0, T // 2, T - 1}) if T else []
    while len(picks) < 3 and picks:  # short episodes: repeat so every fingerprint has 3 hashes
        picks.append(picks[-1])
    p = episode.provenance
    return Fingerprint(
        episode_id=episode.episode_id,
        key=(p.dataset, p.version, p.split, int(p.episode_index)),
        language=normalise_language(episode.language),
        start_hash=digest.hexdigest(),
        phashes=tuple(_phash(frames[t]) for t in picks),
        num_steps=int(T),
        actions=action_signature(episode.actions),
    )


def _bits(fps: list[Fingerprint]) -> np.ndarray:
    """n x (hashes x 64) uint8 bit matrix of the fingerprints' perceptual hashes."""
    words = np.array([fp.phashes for fp in fps], dtype=np.uint64)  # n H
    return np.unpackbits(words.astype(">u8").view(np.uint8), axis=1)  # n H*64


def _perceptual_candidates(fps: list[Fingerprint], max_hamming: int) -> dict[tuple[int, int], int]:
    """All index pairs (i < j) with Hamming distance <= max_hamming, with the distance."""
    n_hashes = {len(fp.phashes) for fp in fps}
    if len(n_hashes) != 1:
        raise ValueError(f"fingerprints hold different numbers of hashes {sorted(n_hashes)}")
    bits = _bits(fps)  # n B (B = 3 x 64)
    n, B = bits.shape
    n_bands = min(max_hamming + 1, B)
    edges = np.linspace(0, B, n_bands + 1).astype(int)
    packed = np.packbits(bits, axis=1)  # n B/8, for the popcount
    found: dict[tuple[int, int], int] = {}
    for b in range(n_bands):
        band = bits[:, edges[b] : edges[b + 1]]
        weights = 1 << np.arange(band.shape[1], dtype=np.int64)
        keys = band.astype(np.int64) @ weights
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        # every pair inside a bucket is (order[k], order[k + d]) with equal sorted keys,
        # for offsets d = 1 .. bucket size - 1: all candidate pairs, vectorised per offset
        for d in range(1, n):
            same = np.flatnonzero(sorted_keys[:-d] == sorted_keys[d:])
            if same.size == 0:
                break
            i, j = order[same], order[same + d]
            dist = _POPCOUNT[packed[i] ^ packed[j]].sum(axis=1)
            close = dist <= max_hamming
            for a, c, dd in zip(np.minimum(i, j)[close], np.maximum(i, j)[close], dist[close]):
                found[(int(a), int(c))] = int(dd)
    return found


def find_duplicates(fingerprints: dict[str, Fingerprint], cfg: DedupConfig | None = None) -> list[DuplicatePair]:
    """Pairs (kept, dropped) of duplicate episodes, sorted by dropped episode key.

    Deterministic whatever the order of `fingerprints`: of each set of
    duplicates the episode with the smallest provenance key is kept."""
    cfg = cfg or DedupConfig()
    if not cfg.enabled or len(fingerprints) < 2:
        return []
    fps = sorted(fingerprints.values(), key=lambda f: (f.key, f.episode_id))
    # perceptual[j] -> [(distance, i)] with i < j in key order
    perceptual: dict[int, list[tuple[int, int]]] = defaultdict(list)
    if cfg.perceptual:
        for (i, j), d in _perceptual_candidates(fps, cfg.max_hamming).items():
            if cfg.perceptual_same_language and fps[i].language != fps[j].language:
                continue
            if cfg.max_action_distance is not None and \
                    action_distance(fps[i].actions, fps[j].actions) > cfg.max_action_distance:
                continue
            perceptual[j].append((d, i))
    first_kept: dict[tuple[str, str], int] = {}  # exact group -> its first kept episode (O(n), not O(m^2))
    kept: set[int] = set()
    pairs = []
    for j, fp in enumerate(fps):
        group = (fp.start_hash, fp.language)
        if cfg.exact and group in first_kept:
            pairs.append(DuplicatePair(fps[first_kept[group]].episode_id, fp.episode_id, "exact", 0))
            continue
        matches = sorted((d, fps[i].key, i) for d, i in perceptual.get(j, ()) if i in kept)
        if matches:
            d, _, i = matches[0]
            pairs.append(DuplicatePair(fps[i].episode_id, fp.episode_id, "perceptual", d))
            continue
        kept.add(j)
        first_kept.setdefault(group, j)
    return pairs
