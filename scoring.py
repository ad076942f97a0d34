"""The one scoring pipeline of the anomaly test and the export: G(z) -> anomaly maps (the
``--residual_map``, forgiving ``--residual_shift``) -> in patch mode, tile maps stitched into
one map at the test image's resolution -> smoothed by ``--map_sigma`` -> each image's
``--image_score``.

Both callers use these functions, eagerly (the anomaly test, patches streamed a batch at a
time) or inside the SavedModel's graph (the export, every patch of a batch of images at once).
Tiles are indexed by (image, top, left) corners: ``tile_corners`` lays them out at a stride
(the last row and column flush with the image's edge), ``tile_indices`` turns corners into
pixel indices, ``gather_tiles`` cuts the tiles and ``add_tiles`` sums values back in place.
"""

import numpy as np
import tensorflow as tf

from losses import anomaly_map, image_score, smooth_maps
from search import SearchResult


def tile_starts(length, patch, stride):
    """The start of every tile along an axis of ``length`` pixels: 0, stride, 2 stride, ...,
    and ``length - patch`` when the last of those does not reach the end (int32, 1-D)."""
    length = tf.convert_to_tensor(length, tf.int32)
    starts = tf.range(0, length - patch + 1, stride, dtype=tf.int32)
    last = length - patch
    return tf.cond(starts[-1] < last, lambda: tf.concat([starts, [last]], 0), lambda: starts)


def tile_corners(height, width, patch, stride):
    """(top, left) of every tile of a ``height`` x ``width`` image, row by row: (n, 2)."""
    rows, cols = tf.meshgrid(tile_starts(height, patch, stride),
                             tile_starts(width, patch, stride), indexing="ij")
    return tf.stack([tf.reshape(rows, [-1]), tf.reshape(cols, [-1])], axis=1)


def tile_indices(images, corners, patch):
    """The (image, y, x) index of every pixel of tiles at (top, left) ``corners`` (n, 2) of
    the batch positions ``images`` (n,): (n, patch, patch, 3), for ``tf.gather_nd``."""
    offsets = tf.range(patch, dtype=tf.int32)
    rows = corners[:, 0, None] + offsets[None]
    cols = corners[:, 1, None] + offsets[None]
    shape = [tf.shape(corners)[0], patch, patch]
    return tf.stack([tf.broadcast_to(images[:, None, None], shape),
                     tf.broadcast_to(rows[:, :, None], shape),
                     tf.broadcast_to(cols[:, None, :], shape)], axis=-1)


def gather_tiles(images, indices):
    """The tiles (n, patch, patch, ...) of ``images`` (batch, h, w, ...) at ``indices``."""
    return tf.gather_nd(images, indices)


def add_tiles(total, indices, values):
    """``total`` (batch, h, w, ...) with tile ``values`` (n, patch, patch, ...) added where
    ``indices`` place them."""
    return tf.tensor_scatter_nd_add(total, indices, tf.cast(values, total.dtype))


def stitched(total, coverage):
    """Tile sums over the number of tiles that cover each pixel: their mean there."""
    coverage = tf.cast(coverage, total.dtype)
    if total.shape.rank == coverage.shape.rank + 1:
        coverage = coverage[..., None]
    return total / coverage


def detection_maps(images, fakes, value_range, search):
    """The anomaly maps (n, h, w) in [0, 1] of images (or tiles) against G(z) under
    ``search`` (a ``config.SearchConfig``), before smoothing."""
    return anomaly_map(images, fakes, value_range, search.residual_map, search.residual_shift)


def image_scores(kind, search_scores, maps, critic, sigma):
    """Each image's ``--image_score`` ``kind`` from its whole (or stitched) ``maps`` (n, h, w),
    smoothed by ``sigma`` first; returns (scores, smoothed maps).

    ``search_scores`` are the search's own scores ('sum'): per image, or None in patch mode,
    where 'sum' is the mean of the map. ``critic()`` gives -D(x) per image (the highest of its
    tiles' in patch mode), called only for 'critic'.
    """
    maps = smooth_maps(maps, sigma)
    if search_scores is None:
        search_scores = tf.reduce_mean(maps, axis=[1, 2])
    return image_score(kind, search_scores, maps, critic), maps


def score_tiled_image(image, patch, stride, batch_size, search_tiles, critic_tiles, value_range,
                      search, kind):
    """Scores one image (1, h, w, c) in patch mode, its tiles streamed ``batch_size`` at a
    time; returns its ``search.SearchResult`` and its smoothed map (1, h, w).

    ``search_tiles(tiles, first)`` searches a batch of tiles (``first``: the index of its
    first tile, for reproducible starting z) and returns a ``SearchResult``; ``critic_tiles``
    gives their -D(x). The result's score is the image score, its residual, discrimination
    and z the means over the tiles, and its snapshots G(z) stitched at the image's size.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    height, width = image.shape[1], image.shape[2]
    corners = tile_corners(height, width, patch, stride)
    count = int(corners.shape[0])
    map_total = coverage = tf.zeros((1, height, width))
    fake_totals, critics, sums = {}, [], {"residual": 0.0, "discrimination": 0.0, "z": 0.0}
    for first in range(0, count, batch_size):
        chosen = corners[first:first + batch_size]
        indices = tile_indices(tf.zeros(chosen.shape[0], tf.int32), chosen, patch)
        tiles = gather_tiles(image, indices)
        result = search_tiles(tiles, first)
        maps = detection_maps(tiles, result.final, value_range, search)
        map_total = add_tiles(map_total, indices, maps)
        coverage = add_tiles(coverage, indices, tf.ones_like(maps))
        for step, fakes in result.snapshots.items():
            total = fake_totals.get(step, tf.zeros_like(image))
            fake_totals[step] = add_tiles(total, indices, fakes)
        sums["residual"] += result.residual.sum()
        sums["discrimination"] += result.discrimination.sum()
        sums["z"] += result.z.sum(axis=0)
        if kind == "critic":
            critics.append(critic_tiles(tiles))
    scores, maps = image_scores(kind, None, stitched(map_total, coverage),
                                lambda: tf.reduce_max(tf.concat(critics, 0))[None], search.map_sigma)
    result = SearchResult(scores.numpy(), np.array([sums["residual"] / count]),
                          np.array([sums["discrimination"] / count]),
                          np.array([sums["z"] / count]),
                          {step: stitched(total, coverage).numpy()
                           for step, total in fake_totals.items()})
    return result, maps.numpy()
