"""The losses and scores, pure functions of logits, images and D's features.

DCGAN's ``discriminator_loss`` and ``generator_loss``; WGAN-GP's ``critic_loss``,
``wasserstein_generator_loss`` and ``gradient_penalty``; the search's Adam step
``adam_update``; AnoGAN's ``anomaly_score``, f-AnoGAN's ``izif_score`` (also the encoder's
training loss); the per-pixel maps (``l1_map``, ``ssim_map``, ``gms_map``, chosen by
``anomaly_map``; ``smooth_maps``), the image scores of maps, ``map_score``, and of D alone,
``critic_score``.
"""

import numpy as np
import tensorflow as tf

from ops import flat


def per_example_bce(logits, target):
    """Sigmoid cross-entropy of each example's logit against a constant target."""
    return tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.fill(tf.shape(logits), target), logits=logits), axis=1)


def discriminator_loss(real_logits, fake_logits):
    """Per example: D's GAN loss, real images labelled 1 and G's images 0."""
    return per_example_bce(real_logits, 1.0) + per_example_bce(fake_logits, 0.0)


def generator_loss(fake_logits):
    """Per example: G's (non-saturating) GAN loss, its images labelled 1."""
    return per_example_bce(fake_logits, 1.0)


def critic_loss(real_logits, fake_logits):
    """Per example: the WGAN critic's loss D(G(z)) - D(x), to be minimised."""
    return tf.reduce_sum(fake_logits - real_logits, axis=1)


def wasserstein_generator_loss(fake_logits):
    """Per example: G's WGAN loss -D(G(z))."""
    return -tf.reduce_sum(fake_logits, axis=1)


def gradient_penalty(critic, real, fake, alpha):
    """Per example: WGAN-GP's (||grad_x critic(x_hat)||_2 - 1)^2 at x_hat = real + alpha
    (fake - real), ``alpha`` (batch, 1, 1, 1) in [0, 1] (Gulrajani et al. 2017)."""
    interpolates = real + alpha * (fake - real)
    with tf.GradientTape() as tape:
        tape.watch(interpolates)
        total = tf.reduce_sum(critic(interpolates))
    gradients = tape.gradient(total, interpolates)
    slopes = tf.sqrt(tf.reduce_sum(tf.square(flat(gradients)), axis=1) + 1e-12)
    return tf.square(slopes - 1.0)


def adam_update(z, grad, m, v, t, config):
    """One step of the original's Adam on z (tf.train.AdamOptimizer: ``config.beta1``, beta2
    0.999, epsilon 1e-8) at 0-based step ``t``, clipped with ``config.clip_z``; (z, m, v)."""
    beta1, beta2, epsilon = config.beta1, 0.999, 1e-8
    step = tf.cast(t + 1, tf.float32)
    m = beta1 * m + (1.0 - beta1) * grad
    v = beta2 * v + (1.0 - beta2) * tf.square(grad)
    rate = config.learning_rate * tf.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
    z = z - rate * m / (tf.sqrt(v) + epsilon)
    return (tf.clip_by_value(z, -1.0, 1.0) if config.clip_z else z), m, v


def anomaly_score(images, fakes, real_features, fake_features, ano_lambda, fake_logits=None):
    """AnoGAN's score per image, (1 - lambda) R + lambda D; returns (score, R, D).

    R = sum |x - G(z)| (residual); D = sum |f(x) - f(G(z))| with f D's feature layer (feature
    matching, the paper's choice) or, given ``fake_logits``, D's GAN loss on G(z).
    """
    residual = tf.reduce_sum(tf.abs(flat(images) - flat(fakes)), axis=1)
    if fake_logits is None:
        discrimination = tf.reduce_sum(tf.abs(flat(real_features) - flat(fake_features)), axis=1)
    else:
        discrimination = generator_loss(fake_logits)
    score = (1.0 - ano_lambda) * residual + ano_lambda * discrimination
    return score, residual, discrimination


def izif_score(images, fakes, real_features, fake_features, kappa):
    """f-AnoGAN's izi_f score per image, R + kappa D; returns (score, R, D).

    R = mean (x - G(z))^2 and D = mean (f(x) - f(G(z)))^2, each over its own elements. With
    z = E(x) its batch mean is the encoder's training loss.
    """
    residual = tf.reduce_mean(tf.square(flat(images) - flat(fakes)), axis=1)
    discrimination = tf.reduce_mean(tf.square(flat(real_features) - flat(fake_features)), axis=1)
    return residual + kappa * discrimination, residual, discrimination


MAP_SCORES = ("top1", "smoothmax")
IMAGE_SCORES = ("sum", *MAP_SCORES, "critic")
RESIDUAL_MAPS = ("l1", "ssim", "gms")
SSIM_WINDOW = 11
"""The side of SSIM's Gaussian window (sigma 1.5), as Wang et al. and Bergmann et al. use."""
GMS_SCALES = 4
GMS_STABILITY = 0.0026
"""RIAD's constant c of the gradient-magnitude similarity, for images in [0, 1]."""


def unit_images(images, value_range):
    """Images (numpy or TensorFlow) mapped from ``value_range`` onto [0, 1], as float32."""
    low, high = value_range
    return (tf.convert_to_tensor(images, tf.float32) - low) / (high - low)


def l1_map(images, fakes):
    """|x - G(z)| averaged over channels, for images in [0, 1]: (n, h, w) in [0, 1]."""
    return tf.reduce_mean(tf.abs(images - fakes), axis=-1)


def ssim_map(images, fakes):
    """(1 - SSIM) / 2 per pixel, for images in [0, 1] (TensorFlow's SSIM, an 11x11 Gaussian
    window of sigma 1.5, averaged over channels; the images mirrored by 5 pixels so that the map
    has their size): (n, h, w) in [0, 1], 0 where the two agree in mean, contrast and
    structure (Bergmann et al. 2019)."""
    pad = SSIM_WINDOW // 2
    padding = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
    similarity = tf.image.ssim(tf.pad(images, padding, mode="REFLECT"),
                               tf.pad(fakes, padding, mode="REFLECT"), max_val=1.0,
                               filter_size=SSIM_WINDOW, filter_sigma=1.5,
                               return_index_map=True)
    return tf.clip_by_value((1.0 - similarity) / 2.0, 0.0, 1.0)


def prewitt_magnitude(gray):
    """The Prewitt gradient magnitude (kernels divided by 3, mirrored edges) of (n, h, w, 1)
    images: (n, h, w, 1)."""
    row = np.array([[-1.0, 0.0, 1.0]] * 3, np.float32) / 3.0
    kernels = np.stack([row, row.T], axis=-1)[:, :, None, :]
    padded = tf.pad(gray, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    gradients = tf.nn.conv2d(padded, kernels, 1, "VALID")
    return tf.sqrt(tf.reduce_sum(tf.square(gradients), axis=-1, keepdims=True) + 1e-12)


def gms_map(images, fakes):
    """1 - the multi-scale gradient-magnitude similarity, for images in [0, 1] (RIAD, Zavrtanik
    et al. 2021): GMS = (2 g_x g_y + c) / (g_x^2 + g_y^2 + c) of the Prewitt magnitudes of the
    gray images at full, 1/2, 1/4 and 1/8 scale (2x2 average pooling, as far as the image
    allows), each resized back bilinearly, averaged: (n, h, w) in [0, 1)."""
    size = tf.shape(images)[1:3]
    x = tf.reduce_mean(images, axis=-1, keepdims=True)
    y = tf.reduce_mean(fakes, axis=-1, keepdims=True)
    similarities = []
    for scale in range(GMS_SCALES):
        if scale:
            if min(x.shape[1] or 8, x.shape[2] or 8) < 4:
                break
            x, y = (tf.nn.avg_pool2d(v, 2, 2, "VALID") for v in (x, y))
        gx, gy = prewitt_magnitude(x), prewitt_magnitude(y)
        similarity = (2 * gx * gy + GMS_STABILITY) / (gx ** 2 + gy ** 2 + GMS_STABILITY)
        similarities.append(tf.image.resize(similarity, size, method="bilinear"))
    return tf.clip_by_value(1.0 - tf.reduce_mean(tf.stack(similarities), axis=0)[..., 0],
                            0.0, 1.0)


MAP_FUNCTIONS = {"l1": l1_map, "ssim": ssim_map, "gms": gms_map}


def anomaly_map(images, fakes, value_range, kind="l1", shift=0):
    """The ``--residual_map`` ``kind`` of each image against G(z) (``MAP_FUNCTIONS``):
    (n, h, w) in [0, 1], 0 where they are equal.

    ``shift`` > 0 forgives misregistration: each pixel's value is the smallest over G(z)
    moved by up to ``shift`` pixels along each axis (G(z) mirrored at its edges).
    """
    images, fakes = unit_images(images, value_range), unit_images(fakes, value_range)
    pixel_map = MAP_FUNCTIONS[kind]
    if shift == 0:
        return pixel_map(images, fakes)
    padded = tf.pad(fakes, [[0, 0], [shift, shift], [shift, shift], [0, 0]], mode="SYMMETRIC")
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    offsets = range(2 * shift + 1)
    maps = [pixel_map(images, padded[:, dy:dy + height, dx:dx + width])
            for dy in offsets for dx in offsets]
    return tf.reduce_min(tf.stack(maps), axis=0)


def gaussian_kernel(sigma, truncate=4.0):
    """scipy.ndimage's normalised 1-D Gaussian of ``sigma`` (radius truncate * sigma)."""
    radius = int(truncate * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def smooth_maps(maps, sigma):
    """Maps (n, h, w) smoothed by a Gaussian of ``sigma`` pixels (radius 4 sigma, mirrored at
    the edges as scipy's 'reflect'; the maps must be larger than the radius); unchanged for
    ``sigma`` 0."""
    maps = tf.convert_to_tensor(maps, tf.float32)
    if not sigma:
        return maps
    taps = gaussian_kernel(sigma)
    radius = len(taps) // 2
    padded = tf.pad(maps[..., None], [[0, 0], [radius, radius], [radius, radius], [0, 0]],
                    mode="SYMMETRIC")
    smooth = tf.nn.conv2d(padded, taps.reshape(-1, 1, 1, 1), 1, "VALID")
    return tf.nn.conv2d(smooth, taps.reshape(1, -1, 1, 1), 1, "VALID")[..., 0]


def map_score(maps, kind):
    """Image scores of anomaly maps (n, h, w) that fit small defects.

    'top1': the mean of each map's top 1 % pixels; 'smoothmax': the maximum of the map
    smoothed by a Gaussian of sigma 2 pixels (``smooth_maps``).
    """
    maps = tf.convert_to_tensor(maps, tf.float32)
    if kind == "top1":
        pixels = tf.shape(maps)[1] * tf.shape(maps)[2]
        flat_maps = tf.reshape(maps, (tf.shape(maps)[0], pixels))
        count = tf.maximum(1, tf.cast(tf.round(tf.cast(pixels, tf.float32) * 0.01), tf.int32))
        return tf.reduce_mean(tf.math.top_k(flat_maps, count).values, axis=1)
    if kind == "smoothmax":
        return tf.reduce_max(flat(smooth_maps(maps, 2.0)), axis=1)
    raise ValueError(f"--image_score {kind!r} is not a map score {MAP_SCORES}")


def image_score(kind, search_score, maps, critic):
    """The ``--image_score`` ``kind`` of each image: 'sum' is the search's own score, 'critic'
    calls ``critic()`` (only then, so D runs only when asked), and a map score
    (``MAP_SCORES``) reads the anomaly ``maps``."""
    if kind == "critic":
        return critic()
    if kind == "sum":
        return search_score
    return map_score(maps, kind)


def critic_score(real_logits):
    """Per image: -D(x), how unlike the training images D (the WGAN critic, or the DCGAN's
    discriminator) finds x itself; G(z) plays no part."""
    return -tf.reduce_sum(real_logits, axis=1)
