"""How a DataLoader worker's batch reaches the main process: one buffer, in a reused shared slot.

    worker:  samples ─► layout (one 64-byte aligned offset per array) ─► arrays stacked straight
             into slot s of this worker's ring of shared buffers ─► busy[w, s] = 1
             ─► PackedBatch(fields, slot=(w, s)) through the worker's queue (a few hundred bytes;
                the slot's tensor itself only the first time, or when a batch outgrew it)
    main:    Batches: copy the batch out of slot (w, s) ─► busy[w, s] = 0 ─► tensors (views of
             the copy)

Why. A tensor sent from a worker travels as a fresh shared-memory segment and a file descriptor;
creating the segment and faulting its pages in (in the worker, then again in the main process)
cost ~3 ms per 2.5 MB batch here (128 px, 32 triplets), about as much as transforming the
batch's samples. A ring of segments made once per worker and reused removes both: the worker writes
into pages already mapped, the main process copies out of pages it mapped once (a memcpy,
~0.25 ms per 2.5 MB) into memory its allocator reuses.

Release. The main process copies a batch out the moment the DataLoader hands it over, then marks
the slot free; a worker has at most the DataLoader's prefetch_factor batches outstanding, so a
ring of prefetch_factor + 2 slots is always free in steady state. A worker that finds its next
slot still busy waits up to SLOT_WAIT_S, then sends that batch in a fresh segment instead (never
a deadlock, never an overwritten batch). The busy flags are made new for every pass over the
loader (the workers of a pass are new processes), so a pass stopped early leaves nothing behind.
Segments are file-descriptor backed (torch's sharing strategy): the kernel frees them when the
last process holding them exits, a killed worker included.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import get_worker_info

_ALIGN = 64  # bytes: each array of a packed batch starts on a cache line (and any dtype's alignment)
SLOT_WAIT_S = 2.0  # longest a worker waits for its next slot before sending a fresh segment


class PackedBatch:
    """A worker's batch on its way to the main process: every array stacked into ONE contiguous
    byte buffer (each at a 64-byte aligned offset), the other fields as lists.

    slot (w, s): the buffer is slot s of worker w's ring; `buffer` travels only when the main
    process does not hold that slot's tensor yet (else None). No slot: `buffer` is the batch's own
    tensor (a fresh segment) or numpy array (pickled through the pipe, in the tests)."""

    __slots__ = ("buffer", "fields", "nbytes", "slot")

    def __init__(self, buffer: Optional[np.ndarray | torch.Tensor], fields: list[tuple[str, Any]], nbytes: int,
                 slot: Optional[tuple[int, int]] = None):
        self.buffer = buffer  # 1-D uint8 tensor / array, or None (the slot's tensor is already in the main process)
        self.fields = fields  # [(key, (offset, nbytes, dtype, shape)) for arrays | (key, list) for the rest]
        self.nbytes = nbytes  # bytes of the buffer the batch uses
        self.slot = slot

    def unpack(self, whole: Optional[torch.Tensor] = None) -> dict[str, Any]:
        """The batch of `collate`: tensors are views of one tensor over `whole` (default: the
        batch's own buffer; no copy)."""
        if whole is None:
            whole = self.buffer if torch.is_tensor(self.buffer) else torch.from_numpy(self.buffer)
        batch: dict[str, Any] = {}
        for key, spec in self.fields:
            if isinstance(spec, list):
                batch[key] = spec
                continue
            off, size, dtype, shape = spec
            batch[key] = whole[off:off + size].view(_torch_dtype(dtype)).view(shape)
        return batch


def layout(samples: list[dict[str, Any]]) -> tuple[list[tuple[str, Any]], int]:
    """The fields of a packed batch (collate's order and dtypes) and the bytes its buffer needs."""
    n, fields, total = len(samples), [], 0
    for k, v in samples[0].items():
        if isinstance(v, np.ndarray):
            fields.append((k, (total, n * v.nbytes, v.dtype, (n, *v.shape))))
            total += -(-(n * v.nbytes) // _ALIGN) * _ALIGN
        else:
            fields.append((k, [s[k] for s in samples]))
    return fields, total


def fill(raw: np.ndarray, fields: list[tuple[str, Any]], samples: list[dict[str, Any]]) -> None:
    """Stack every array field of the samples into `raw` (uint8, at least the layout's bytes)."""
    for k, spec in fields:
        if not isinstance(spec, list):
            off, size, dtype, shape = spec
            np.stack([s[k] for s in samples], out=raw[off:off + size].view(dtype).reshape(shape))


def pack(samples: list[dict[str, Any]], shared: bool = True) -> PackedBatch:
    """The samples' arrays stacked into one fresh buffer: a shared tensor, or a numpy array."""
    fields, total = layout(samples)
    buffer = torch.empty(total, dtype=torch.uint8).share_memory_() if shared else np.empty(total, np.uint8)
    fill(buffer.numpy() if shared else buffer, fields, samples)
    return PackedBatch(buffer, fields, total)


class SlotCollate:
    """make_loader's collate_fn. In the main process: `in_process(samples)`. In a worker: the
    batch packed into the worker's next shared slot (module docstring)."""

    def __init__(self, in_process: Callable[[list[dict[str, Any]]], Any], slots: int):
        self.in_process, self.slots = in_process, slots
        self.busy: Optional[torch.Tensor] = None  # W S int32, shared; set by Batches before each pass
        self._ring: dict[int, torch.Tensor] = {}  # in a worker: slot -> its shared buffer
        self._next = 0

    def __getstate__(self):  # what a spawned worker receives: no ring of the parent's
        return {"in_process": self.in_process, "slots": self.slots, "busy": self.busy, "_ring": {}, "_next": 0}

    def __call__(self, samples: list[dict[str, Any]]) -> Any:
        info = get_worker_info()
        if info is None:
            return self.in_process(samples)
        fields, total = layout(samples)
        s = self._next % self.slots  # the oldest of the ring: the main process frees slots in order
        if not self._wait_free(info.id, s):
            return pack(samples)  # the main process still holds that batch: a fresh segment, same slot next
        self._next += 1
        buf, send = self._ring.get(s), None
        if buf is None or buf.numel() < total:
            buf = send = self._ring[s] = torch.empty(total, dtype=torch.uint8).share_memory_()
        fill(buf.numpy(), fields, samples)
        self.busy[info.id, s] = 1
        return PackedBatch(send, fields, total, slot=(info.id, s))

    def _wait_free(self, worker: int, s: int) -> bool:
        t0 = time.monotonic()
        while self.busy[worker, s]:
            if time.monotonic() - t0 > SLOT_WAIT_S:
                return False
            time.sleep(1e-4)
        return True


class Batches:
    """make_loader's iterable: the DataLoader's batches, a worker's PackedBatch copied out of its
    slot (the slot freed at once) or unpacked. `dataloader` is the torch DataLoader underneath."""

    def __init__(self, dataloader, collate: Optional[SlotCollate] = None):
        self.dataloader, self.collate = dataloader, collate
        # the last pass: batches, slot tensors received (at most workers x slots), fresh segments
        self.stats = {"batches": 0, "slot_tensors": 0, "fresh": 0}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        busy = None
        if self.collate is not None:  # before the pass starts its workers: they take these flags
            busy = self.collate.busy = torch.zeros(self.dataloader.num_workers, self.collate.slots,
                                                   dtype=torch.int32).share_memory_()
        held: dict[tuple[int, int], torch.Tensor] = {}  # this pass's slots: (worker, slot) -> tensor
        stats = self.stats = {"batches": 0, "slot_tensors": 0, "fresh": 0}
        for batch in self.dataloader:
            stats["batches"] += 1
            if not isinstance(batch, PackedBatch):
                yield batch
            elif batch.slot is None:
                stats["fresh"] += 1
                yield batch.unpack()
            else:
                if batch.buffer is not None:
                    stats["slot_tensors"] += 1
                    held[batch.slot] = batch.buffer
                # numpy's copy: one thread (torch's clone of a large tensor starts its OpenMP pool,
                # whose threads then spin on the cores the workers need)
                mine = torch.from_numpy(held[batch.slot].numpy()[:batch.nbytes].copy())
                busy[batch.slot] = 0
                yield batch.unpack(mine)


@functools.lru_cache(maxsize=None)
def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype
