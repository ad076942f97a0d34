"""Tiling an image into patches and stitching per-patch maps back, as the patch mode's anomaly
test and export do."""

import numpy as np
import pytest
import tensorflow as tf

import scoring


@pytest.mark.parametrize(("length", "patch", "stride", "starts"), [
    (64, 64, 32, [0]),
    (100, 64, 32, [0, 32, 36]),
    (128, 64, 32, [0, 32, 64]),
    (70, 16, 16, [0, 16, 32, 48, 54]),
    (17, 16, 1, [0, 1]),
])
def test_tiles_start_at_the_stride_and_the_last_one_ends_at_the_edge(length, patch, stride,
                                                                     starts):
    assert scoring.tile_starts(length, patch, stride).numpy().tolist() == starts


def test_tiling_then_stitching_recovers_a_hand_made_per_patch_map_exactly():
    height, width, patch, stride = 40, 56, 16, 8
    full = np.arange(height * width, dtype=np.float32).reshape(1, height, width) / 8.0
    corners = scoring.tile_corners(height, width, patch, stride)
    assert corners.shape[0] == 4 * 6
    indices = scoring.tile_indices(tf.zeros(len(corners), tf.int32), corners, patch)
    tiles = scoring.gather_tiles(full, indices)
    for (top, left), tile in zip(corners.numpy(), tiles.numpy()):
        np.testing.assert_array_equal(tile, full[0, top:top + patch, left:left + patch])
    total = scoring.add_tiles(tf.zeros_like(full), indices, tiles)
    coverage = scoring.add_tiles(tf.zeros_like(full), indices, tf.ones_like(tiles))
    assert coverage.numpy().min() == 1 and coverage.numpy().max() == 4
    np.testing.assert_array_equal(scoring.stitched(total, coverage).numpy(), full)


def test_stitching_averages_where_tiles_overlap_and_streams_in_batches():
    patch = 4
    corners = scoring.tile_corners(4, 6, patch, 2)  # tiles at x = 0 and 2
    indices = scoring.tile_indices(tf.zeros(2, tf.int32), corners, patch)
    values = tf.constant([np.full((4, 4), 1.0), np.full((4, 4), 3.0)], tf.float32)
    total = tf.zeros((1, 4, 6))
    coverage = tf.zeros((1, 4, 6))
    for one in range(2):  # one tile per batch, as the anomaly test streams them
        total = scoring.add_tiles(total, indices[one:one + 1], values[one:one + 1])
        coverage = scoring.add_tiles(coverage, indices[one:one + 1],
                                     tf.ones_like(values[one:one + 1]))
    row = scoring.stitched(total, coverage).numpy()[0, 0]
    np.testing.assert_array_equal(row, [1, 1, 2, 2, 3, 3])


def test_tiles_of_several_images_and_channels_go_back_to_their_own_image():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 20, 24, 3)).astype(np.float32)
    corners = scoring.tile_corners(20, 24, 8, 6)
    both = tf.concat([corners, corners], 0)
    owner = tf.repeat(tf.range(2), len(corners))
    indices = scoring.tile_indices(owner, both, 8)
    tiles = scoring.gather_tiles(images, indices)
    total = scoring.add_tiles(tf.zeros_like(images), indices, tiles)
    coverage = scoring.add_tiles(tf.zeros(images.shape[:3]), indices,
                                 tf.ones(tiles.shape[:3]))
    np.testing.assert_allclose(scoring.stitched(total, coverage).numpy(), images, rtol=1e-6)
