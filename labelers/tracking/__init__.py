"""2D point tracking: queries on the anchor frame, tracks and visibility over a horizon.

The tracker interface (every backend, `get_tracker(name, **params)`):

    tracker(frames, queries_xy) -> (tracks_px, visible)

    frames      T x H x W x 3 uint8 RGB; frame 0 is the query (anchor) frame
    queries_xy  K x 2 float pixels (x, y) on frame 0, pixel centres at (j + 0.5, i + 0.5)
    tracks_px   K x T x 2 float32 pixels, same convention (the schema's N K T 2 order)
    visible     K x T bool: the tracker's own verdict (occluded, lost or outside -> False)

Queries outside the image get NaN tracks and visible False (a masked result,
not an error). Backends may also offer `track_anchors(frames, anchors,
queries_xy, horizon)`, the same for many anchors of one episode at once
(N x K x horizon x 2, N x K x horizon; steps past the end NaN / False), which
the episode labeler prefers because it shares image pyramids between anchors.

Backends
- "lk": pyramidal Lucas-Kanade (OpenCV) with a forward-backward consistency
  check deciding visibility; the CPU default. Mode "chain" (default) tracks
  frame to frame (t -> t+1), all anchors of a frame pair in one LK call;
  mode "anchor" re-solves each step against the anchor frame, starting from
  the chained estimate (no drift, re-acquires after short occlusions, but
  loses points whose appearance changes); "hybrid" combines both. The
  default was chosen by `curate bench labels` on Meta-World ground truth.
- "flow": integrates dense optical flow (DIS) frame to frame with a
  forward-backward flow check; its cost does not grow with points or anchors.
- "learned": the default LK, then each solved step re-estimated against the anchor frame by a
  small refiner trained on simulator ground truth (learned.py, refiner.py; trained by
  labelers/training/track_refiner.py, `curate tracker train`; weights shipped in weights/).
- "cotracker": CoTracker3 through torch.hub (cotracker.py).

Modules: common (interface, grids, checks), lk, lk_refined, flow, learned, refiner,
cotracker, registry (get_tracker).
"""
