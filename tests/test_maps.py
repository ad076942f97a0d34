"""The anomaly maps and their smoothing, checked by hand: equal images give zero maps, and a
known edit gives its known footprint."""

import numpy as np
import pytest
import tensorflow as tf

import losses
from config import SearchConfig

UNIT = (0.0, 1.0)


def texture(size=64, channels=1, seed=0):
    """A smooth random texture in [0.2, 0.8]: (1, size, size, channels)."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(size=(1, size, size, channels)).astype(np.float32)
    smooth = tf.nn.avg_pool2d(tf.pad(noise, [[0, 0], [1, 1], [1, 1], [0, 0]], "SYMMETRIC"), 3,
                              1, "VALID").numpy()
    return 0.2 + 0.6 * smooth


def edited(image, top, left, side, delta):
    """``image`` with ``delta`` added to a ``side`` x ``side`` square at (top, left)."""
    out = image.copy()
    out[:, top:top + side, left:left + side, :] += delta
    return out


def distance_to_square(size, top, left, side):
    """Chebyshev distance of every pixel of a size x size map to the square."""
    yy, xx = np.mgrid[0:size, 0:size]
    dy = np.maximum(np.maximum(top - yy, yy - (top + side - 1)), 0)
    dx = np.maximum(np.maximum(left - xx, xx - (left + side - 1)), 0)
    return np.maximum(dy, dx)


@pytest.mark.parametrize("kind", losses.RESIDUAL_MAPS)
@pytest.mark.parametrize("channels", [1, 3])
def test_equal_images_give_a_zero_map_of_their_size(kind, channels):
    image = texture(48, channels)
    maps = losses.anomaly_map(image * 2 - 1, image * 2 - 1, (-1.0, 1.0), kind).numpy()
    assert maps.shape == (1, 48, 48)
    np.testing.assert_allclose(maps, 0.0, atol=1e-5)


def test_l1_map_is_the_edit_itself():
    image = texture()
    maps = losses.anomaly_map(image, edited(image, 10, 20, 3, 0.15), UNIT, "l1").numpy()[0]
    expected = np.zeros((64, 64), np.float32)
    expected[10:13, 20:23] = 0.15
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    shifted = losses.anomaly_map(image, np.roll(image, 1, axis=2), UNIT, "l1", shift=1).numpy()
    np.testing.assert_allclose(shifted[0, :, 2:-2], 0.0, atol=1e-6)


def test_ssim_map_lies_within_its_window_of_the_edit():
    image = texture()
    maps = losses.anomaly_map(image, edited(image, 30, 30, 3, 0.3), UNIT, "ssim").numpy()[0]
    distance = distance_to_square(64, 30, 30, 3)
    assert np.all(maps[distance > losses.SSIM_WINDOW // 2] < 1e-5)
    assert maps[30:33, 30:33].min() > 0.05
    assert 0.0 <= maps.min() and maps.max() <= 1.0


def test_ssim_map_sees_structure_that_l1_ranks_below_a_brightness_change():
    image = texture()
    brighter = image + 0.1  # the same structure, brighter
    scrambled = image.copy()
    patch = scrambled[:, 16:48, 16:48, :]
    scrambled[:, 16:48, 16:48, :] = np.flip(patch, axis=(1, 2))  # same values, moved
    l1 = [float(losses.anomaly_map(image, other, UNIT, "l1").numpy().mean())
          for other in (brighter, scrambled)]
    ssim = [float(losses.anomaly_map(image, other, UNIT, "ssim").numpy().mean())
            for other in (brighter, scrambled)]
    assert ssim[1] > ssim[0]
    assert l1[1] < 2 * l1[0]


def test_gms_map_marks_an_edge_and_nothing_far_from_it():
    image = np.full((1, 64, 64, 1), 0.5, np.float32)
    maps = losses.anomaly_map(image, edited(image, 28, 28, 8, 0.4), UNIT, "gms").numpy()[0]
    distance = distance_to_square(64, 28, 28, 8)
    reach = 1 + 2 ** (losses.GMS_SCALES - 1) * 2  # Prewitt's pixel at the coarsest scale
    assert np.all(maps[distance > reach] < 1e-5)
    assert maps[28, 28:36].min() > 0.5  # the square's edge
    assert np.unravel_index(np.argmax(maps), maps.shape)[0] in range(26, 38)
    flat_change = edited(image, 0, 0, 64, 0.2)  # brighter everywhere: no gradient changes
    np.testing.assert_allclose(losses.anomaly_map(image, flat_change, UNIT, "gms"), 0.0,
                               atol=1e-5)


def test_smoothing_spreads_a_point_into_scipys_gaussian():
    delta = np.zeros((1, 41, 41), np.float32)
    delta[0, 20, 20] = 1.0
    smooth = losses.smooth_maps(delta, 2.0).numpy()[0]
    taps = losses.gaussian_kernel(2.0)
    expected = np.zeros((41, 41), np.float32)
    expected[12:29, 12:29] = np.outer(taps, taps)
    np.testing.assert_allclose(smooth, expected, atol=1e-7)
    np.testing.assert_array_equal(losses.smooth_maps(delta, 0.0), delta)


def test_map_sigma_is_checked_against_the_map_size():
    SearchConfig(map_sigma=1.5).check_map_size(8, 8)
    with pytest.raises(ValueError, match="--map_sigma 4 reaches 16 pixels"):
        SearchConfig(map_sigma=4.0).check_map_size(16, 28)
    for bad in ({"map_sigma": -1.0}, {"residual_map": "l2"}):
        with pytest.raises(ValueError):
            SearchConfig(**bad)


def test_region_overlap_is_one_for_a_perfect_map_and_near_chance_for_noise():
    from evaluation import RegionOverlap

    masks = np.zeros((1, 200, 200), bool)
    masks[0, 20:50, 20:50] = masks[0, 100:150, 100:110] = True  # two regions of unequal size
    perfect = RegionOverlap()
    perfect.add(np.where(masks, 0.9, 0.1), masks)
    assert perfect.auc() == pytest.approx(1.0)
    inverted = RegionOverlap()
    inverted.add(np.where(masks, 0.1, 0.9), masks)
    assert inverted.auc() == pytest.approx(0.0)
    noise = RegionOverlap()
    noise.add(np.random.default_rng(0).uniform(size=masks.shape), masks)
    assert noise.auc() == pytest.approx(0.15, abs=0.02)  # overlap = FPR: 0.3^2 / 2 / 0.3
    one_found = np.random.default_rng(1).uniform(0.0, 0.5, masks.shape)
    one_found[0, 20:50, 20:50] = 0.9  # the large region found, the small one like noise
    half = RegionOverlap()
    half.add(one_found, masks)
    assert half.auc() == pytest.approx(0.5 * 1.0 + 0.5 * 0.15, abs=0.02)  # each region once
    assert RegionOverlap().auc() is None
