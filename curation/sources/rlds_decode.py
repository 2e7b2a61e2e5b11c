"""Decode an episode's encoded images exactly as TFDS does: same op, same settings, same pixels.

`builder.as_dataset()` decodes every `tfds.features.Image` with that feature's own
`decode_example`: `tf.image.decode_image` with the feature's channel count and dtype, and
for dtype float32 (berkeley_autolab_ur5's `image_with_depth`) a 4-channel uint8 PNG whose
4 bytes per pixel are bitcast to one float32. `FrameDecoder` runs that very method over
the T encoded frames of one episode inside one tf.function (`tf.map_fn`), so the result is
bit-identical to as_dataset for every encoding, JPEG included (TF decodes JPEG with its own
libjpeg settings; OpenCV's differ by up to 6 grey levels on 70% of pixels), at the speed of
one bulk call per camera and episode instead of a nested tf.data pipeline per step.

A batch that fails (an undecodable frame, frames of different sizes) is decoded again frame
by frame, to name the first bad step in the error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas.episode import EpisodeError


def feature_at(features: Any, step_key: str) -> Any:
    """The feature connector of a step path ("observation/image") in a builder's features.

    Feature names may contain "/" (kuka's "clip_function_input/base_pose_tool_reached"):
    at each level the longest name that exists wins, as in the reader's key subset."""
    import tensorflow_datasets as tfds

    node = features["steps"]
    rest = step_key.split("/")
    while rest:
        if isinstance(node, tfds.features.Dataset):
            node = node.feature
        for n in range(len(rest), 0, -1):
            name = "/".join(rest[:n])
            if isinstance(node, tfds.features.FeaturesDict) and name in node.keys():
                break
        else:
            raise KeyError(step_key)
        node, rest = node[name], rest[n:]
    return node


def is_image_feature(feature: Any) -> bool:
    import tensorflow_datasets as tfds

    return isinstance(feature, tfds.features.Image)


class FrameDecoder:
    """T encoded frames of one Image feature -> T x H x W x C array, as `as_dataset` decodes them.

    C and the dtype are the feature's: uint8 RGB (C 3), uint16 PNG depth (C 1), float32
    images (C 1, from the bitcast 4-channel PNG)."""

    def __init__(self, feature: Any, what: str, threads: int = 1):
        """`what` names the frames in errors ("camera 'image'", "depth 'observation/depth'")."""
        import tensorflow as tf

        self.feature, self.what = feature, what
        self.dtype = np.dtype(feature.np_dtype)
        channels = feature.shape[-1]
        element = tf.TensorSpec([None, None, channels], tf.dtypes.as_dtype(self.dtype))
        decode_one = tf.autograph.experimental.do_not_convert(feature.decode_example)

        def decode_all(blobs):  # T encoded strings -> T x H x W x C
            return tf.map_fn(decode_one, blobs, fn_output_signature=element, parallel_iterations=max(1, threads))

        self._decode_all = tf.function(decode_all, input_signature=[tf.TensorSpec([None], tf.string)])

    def __call__(self, encoded: np.ndarray, where: str) -> np.ndarray:
        import tensorflow as tf

        if len(encoded) == 0:
            return np.zeros((0, 0, 0, self.feature.shape[-1]), self.dtype)
        blobs = [bytes(b) for b in encoded]
        try:
            return self._decode_all(tf.constant(blobs, tf.string)).numpy()
        except (tf.errors.OpError, ValueError) as e:
            self._raise_first_bad_frame(blobs, where)
            # Every frame decodes alone, yet the batch failed: report TF's own reason.
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EpisodeError(where, f"{self.what}: cannot decode its {len(blobs)} frames ({reason})") from None

    def _raise_first_bad_frame(self, blobs: list[bytes], where: str) -> None:
        import tensorflow as tf

        first = None
        for t, blob in enumerate(blobs):
            try:
                img = self.feature.decode_example(tf.constant(blob, tf.string)).numpy()
            except (tf.errors.OpError, ValueError):
                raise EpisodeError(where, f"step {t} {self.what}: undecodable image ({len(blob)} bytes)") from None
            if first is None:
                first = img.shape
            elif img.shape != first:
                raise EpisodeError(where, f"step {t} {self.what}: image shape {img.shape} != {first} at step 0")
