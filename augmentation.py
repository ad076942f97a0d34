"""Differentiable augmentation of D's inputs (DiffAugment, Zhao et al. 2020, arXiv 2006.10738).

In training, the same random transformations are applied to real images and to G's, before D
sees them and inside the gradient of G's loss, so that D cannot overfit a small folder and G is
still pulled towards the un-augmented images. ``augment`` applies the named policies in order:
'color' (brightness and contrast per image), 'translation' (a shift of up to 1/8 of the size,
zero-filled) and 'cutout' (a zeroed square of half the size).
"""

import tensorflow as tf

POLICIES = ("color", "translation", "cutout")


def random_per_image(images, low, high, dtype=tf.float32):
    """One uniform draw in [low, high) per image, shaped to broadcast over (h, w, c)."""
    return tf.random.uniform((tf.shape(images)[0], 1, 1, 1), low, high, dtype=dtype)


def color(images):
    """Brightness (+U(-0.5, 0.5)) and contrast (x U(0.5, 1.5) about each image's mean)."""
    images = images + random_per_image(images, -0.5, 0.5)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    return (images - mean) * random_per_image(images, 0.5, 1.5) + mean


def shift_indices(length, shift):
    """Per image, the source index of each of ``length`` positions shifted by ``shift`` (b,),
    clipped into range, and whether it was in range (zero-fill where not)."""
    source = tf.range(length)[None, :] - shift[:, None]
    inside = (source >= 0) & (source < length)
    return tf.clip_by_value(source, 0, length - 1), inside


def translation(images, ratio=0.125):
    """Shifts each image by up to ``ratio`` of its height and width, zero-filling the border."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    max_dy = tf.cast(tf.cast(height, tf.float32) * ratio + 0.5, tf.int32)
    max_dx = tf.cast(tf.cast(width, tf.float32) * ratio + 0.5, tf.int32)
    dy = tf.random.uniform((batch,), -max_dy, max_dy + 1, dtype=tf.int32)
    dx = tf.random.uniform((batch,), -max_dx, max_dx + 1, dtype=tf.int32)
    rows, rows_inside = shift_indices(height, dy)
    cols, cols_inside = shift_indices(width, dx)
    shifted = tf.gather(tf.gather(images, rows, axis=1, batch_dims=1), cols, axis=2,
                        batch_dims=1)
    inside = rows_inside[:, :, None, None] & cols_inside[:, None, :, None]
    return shifted * tf.cast(inside, images.dtype)


def square_mask(height, width, centre_y, centre_x, size_y, size_x):
    """Per image, 0 inside the square of the given centre (b,) and size, 1 elsewhere:
    (b, height, width, 1)."""
    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    in_rows = tf.abs(rows - centre_y[:, None]) * 2 < size_y
    in_cols = tf.abs(cols - centre_x[:, None]) * 2 < size_x
    inside = in_rows[:, :, None, None] & in_cols[:, None, :, None]
    return 1.0 - tf.cast(inside, tf.float32)


def cutout(images, ratio=0.5):
    """Zeroes one square of ``ratio`` of the size per image, centred anywhere in it."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    size_y = tf.cast(tf.cast(height, tf.float32) * ratio + 0.5, tf.int32)
    size_x = tf.cast(tf.cast(width, tf.float32) * ratio + 0.5, tf.int32)
    centre_y = tf.random.uniform((batch,), 0, height, dtype=tf.int32)
    centre_x = tf.random.uniform((batch,), 0, width, dtype=tf.int32)
    mask = square_mask(height, width, centre_y, centre_x, size_y, size_x)
    return images * tf.cast(mask, images.dtype)


TRANSFORMS = {"color": color, "translation": translation, "cutout": cutout}


def augment(images, policies):
    """``images`` through each of ``policies`` (names in ``POLICIES``) in order."""
    for name in policies:
        images = TRANSFORMS[name](images)
    return images
