"""Lucas-Kanade tracking that knows when nothing moved, and re-solves against older frames.

Two additions to the frame-to-frame ("chain") LK tracker of labelers/tracks.py, both
chosen by `curate bench labels` on simulator ground truth (see RefinedLKTracker):

1. Static-point test from frame differences. Where the neighbourhood of a query in
   the anchor frame is unchanged in frame f (every pixel of the (2r+1)^2 window within
   `static_tol` grey levels, every channel), the point is at its query position and
   visible at f: nothing moved there, so there is no motion to label. Likewise a point
   whose window is unchanged between f and f + 1 keeps its position for that step.
   Only the other points are solved by LK, which removes the aperture-problem streaks
   of static points next to a moving arm (their LK window sees the arm) and saves
   LK work on the mostly static frame.

2. Multi-frame references. Chained LK under-estimates sub-pixel steps (on Meta-World
   128 px, a true 0.25-0.5 px step comes out at a third of its length) and the bias adds
   up over the horizon. After each chained step the position at f + 1 is re-solved from
   the point's own position `ref_gap` steps earlier (or the anchor, when nearer),
   starting from the chained estimate: one solve over a displacement several times
   larger, so the per-step bias is paid once per `ref_gap` steps instead of every step.
   The re-solved position is kept when LK converged and it lies within `refine_radius_px`
   of the chained one (else the template no longer matches and the chain stands).

Pixel convention as everywhere: centres at (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import numpy as np

from labelers.tracking.common import inside_image

from labelers.tracking.lk import LKTracker

# The image width the static window (static_radius) was chosen at: with static_scale the
# window keeps its size in pixels of a 128 px image (3 x 3 at 128 px, 5 x 5 at 256 px).
STATIC_REFERENCE_WIDTH = 128


def static_window_radius(radius: int, width: int, scale: bool) -> int:
    """Half-size of the static test's window on a `width` px image: `radius` as given, or with
    `scale` the same extent in pixels of a STATIC_REFERENCE_WIDTH image, rounded half up (a
    window never shrinks to a single pixel unless radius is 0)."""
    if not scale or radius == 0:
        return radius
    return max(1, int(np.floor(radius * width / STATIC_REFERENCE_WIDTH + 0.5)))


def unchanged_map(img0: np.ndarray, img1: np.ndarray, radius: int, tol: int) -> np.ndarray:
    """H x W bool: every pixel of the (2 radius + 1)^2 window around each pixel differs by at
    most `tol` levels between the two uint8 images (H W or H W C; all channels)."""
    import cv2

    diff = cv2.absdiff(img0, img1)
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    changed = (diff > tol).astype(np.uint8)
    if radius > 0:
        changed = cv2.dilate(changed, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8))
    return changed == 0


def sample_nearest(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """mask H W at pixel positions M x 2 (the pixel containing each point); False outside."""
    H, W = mask.shape
    ok = inside_image(xy, H, W)
    col = np.clip(np.floor(np.nan_to_num(xy[:, 0], nan=0.0)), 0, W - 1).astype(np.int64)
    row = np.clip(np.floor(np.nan_to_num(xy[:, 1], nan=0.0)), 0, H - 1).astype(np.int64)
    return ok & mask[row, col]


class RefinedLKTracker(LKTracker):
    """Chained pyramidal LK (as LKTracker mode "chain") plus the static-point test and
    multi-frame references of this module's docstring.

    static_radius: half-size of the frame-difference window (pixels; 2 -> 5 x 5);
    static_tol: grey levels a pixel may change and still count as unchanged (0 for
    rendered video, where a static pixel repeats bit for bit; a few levels for camera
    noise); static_anchor / static_step: the test against the anchor frame / against the
    previous frame; ref_gap: steps back of the re-solve reference (0 = off); static_scale:
    read static_radius in pixels of a 128 px image and scale it with the frame width
    (static_window_radius; the default: 3 x 3 at 128 px, 5 x 5 at 256 px).

    Defaults chosen on pick-place, drawer-open and button-press-topdown (2 episodes each,
    128 px, horizon 32, stride 8; TAP-Vid delta_avg at the 256 px scale): plain chain LK
    all points 0.906 / moving 0.577 / false motion 0.111; + static test (5 x 5 window)
    0.941 / 0.580 / 0.070; + re-solve 4 steps back 0.943 / 0.600 / 0.073; with a 3 x 3
    window (the default) 0.952 / 0.589 / 0.059. A single pixel (radius 0) pins moving
    pixels of the uniformly red arm (moving 0.491); re-solving 8 steps back, LK windows of
    7-15 px, a 2x upsampled image (finer internal scale, 4x the CPU) and gating the test on
    local contrast all stayed within 0.02 on moving points. At 256 px (door-open, push,
    window-close, faucet-open, reach; 1 episode each) the window scaled to 5 x 5 against a
    fixed 3 x 3: moving delta_avg 0.645 vs 0.619 (the plain chain 0.638), moving 3D median
    6.3 vs 7.6 mm, false motion 0.068 vs 0.059 (chain 0.076).
    """

    name = "lk"

    def __init__(self, static_anchor: bool = True, static_step: bool = True, static_radius: int = 1, static_tol: int = 2,
                 ref_gap: int = 4, refine_radius_px: float = 2.0, static_scale: bool = True, **lk_params):
        lk_params.setdefault("mode", "chain")
        if lk_params["mode"] != "chain":
            raise ValueError(f"RefinedLKTracker refines chained tracking; mode must be 'chain', got {lk_params['mode']!r}")
        if ref_gap < 0 or static_radius < 0 or static_tol < 0:
            raise ValueError(f"ref_gap, static_radius and static_tol must be >= 0, got {ref_gap}, {static_radius}, {static_tol}")
        super().__init__(refine_radius_px=refine_radius_px, **lk_params)
        self.static_anchor = bool(static_anchor)
        self.static_step = bool(static_step)
        self.static_radius = int(static_radius)
        self.static_tol = int(static_tol)
        self.ref_gap = int(ref_gap)
        self.static_scale = bool(static_scale)

    def _chain(self, pyr, anchors, q, q_in, horizon, T, H, W, tracks, visible) -> None:
        """Frame-to-frame tracking of all active anchors of a frame pair at once; static points
        skip LK, the others are re-solved against an older reference frame."""
        idx = np.flatnonzero(q_in)
        M = idx.size
        qm = q[idx]  # M 2, the query positions
        cur = np.repeat(qm[None], len(anchors), axis=0)  # N M 2
        alive = np.ones(cur.shape[:2], bool)
        for f in range(T - 1):
            act = np.flatnonzero((anchors <= f) & (f + 1 - anchors < horizon))
            if act.size == 0:
                continue
            p0 = cur[act]  # A M 2
            at_query, still = self._static(pyr, anchors[act], f, qm, p0)  # A M each
            p1 = np.where(at_query[..., None], qm[None], p0)
            solve = ~(at_query | still)
            ok = at_query | still  # a static point is seen where it was
            if solve.any():
                sel = np.nonzero(solve)
                new, ok_s, st = self._fb(pyr[f], pyr[f + 1], p0[sel], None, H, W)
                new = np.where(st[:, None], new, p0[sel])  # a failed solve keeps the last position
                new = self._re_solve(pyr, anchors, act, f, sel, new, tracks, idx, H, W)
                p1[sel] = new
                ok[sel] = ok_s
            for i, n in enumerate(act):
                j = f + 1 - anchors[n]
                alive[n] = (alive[n] & ok[i]) | at_query[i]  # a point found at its query is seen again
                cur[n] = p1[i]
                tracks[n, idx, j] = p1[i]
                visible[n, idx, j] = alive[n]

    def _static(self, pyr, act_anchors, f, qm, p0) -> tuple[np.ndarray, np.ndarray]:
        """(at_query, still), A M bool: the query window is unchanged from the anchor to f + 1;
        the window at the current position is unchanged from f to f + 1."""
        A, M = p0.shape[:2]
        at_query = np.zeros((A, M), bool)
        still = np.zeros((A, M), bool)
        r = static_window_radius(self.static_radius, np.asarray(pyr[f]).shape[1], self.static_scale)
        tol = self.static_tol
        if self.static_anchor:
            for i, a in enumerate(act_anchors):
                at_query[i] = sample_nearest(unchanged_map(pyr[a], pyr[f + 1], r, tol), qm)
        if self.static_step:
            step = unchanged_map(pyr[f], pyr[f + 1], r, tol)
            still = sample_nearest(step, p0.reshape(-1, 2)).reshape(A, M)
        return at_query, still

    def _re_solve(self, pyr, anchors, act, f, sel, new, tracks, idx, H, W) -> np.ndarray:
        """Re-solve the chained positions `new` (S 2, of points sel = (row into act, point))
        at f + 1 from each point's tracked position at the reference frame
        max(anchor, f + 1 - ref_gap), starting from the chained estimate."""
        if self.ref_gap < 2:
            return new
        rows, pts = sel
        n_of = act[rows]  # anchor index of each point
        ref_frame = np.maximum(anchors[n_of], f + 1 - self.ref_gap)
        out = new.copy()
        for r in np.unique(ref_frame):
            if r >= f:  # one step back is the chain itself
                continue
            m = np.flatnonzero(ref_frame == r)
            start = tracks[n_of[m], idx[pts[m]], r - anchors[n_of[m]]].astype(np.float64)  # S' 2
            ref, st = self._lk(pyr[r], pyr[f + 1], start, new[m])
            near = np.sqrt(((ref - new[m]) ** 2).sum(-1)) < self.refine_radius_px
            good = st & near & inside_image(ref, H, W) & np.isfinite(start).all(-1)
            out[m[good]] = ref[good]
        return out
