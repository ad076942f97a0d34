"""The losses and scores, pure functions of logits, images and D's features.

DCGAN's ``discriminator_loss`` and ``generator_loss``; WGAN-GP's ``critic_loss``,
``wasserstein_generator_loss`` and ``gradient_penalty``; the search's Adam step
``adam_update``; AnoGAN's ``anomaly_score``, f-AnoGAN's ``izif_score`` (also the encoder's
training loss); per-pixel ``anomaly_map``, the image scores of maps, ``map_score``, and of D
alone, ``critic_score``.
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


def anomaly_map(images, fakes, value_range, shift=0):
    """Per pixel |x - G(z)| averaged over channels, in [0, 1]: (n, h, w).

    ``shift`` > 0 forgives misregistration: each pixel's residual is the smallest over G(z)
    moved by up to ``shift`` pixels along each axis (G(z) mirrored at its edges).
    """
    low, high = value_range
    images = tf.convert_to_tensor(images, tf.float32)
    fakes = tf.convert_to_tensor(fakes, tf.float32)
    if shift == 0:
        return tf.reduce_mean(tf.abs(images - fakes), axis=-1) / (high - low)
    padded = tf.pad(fakes, [[0, 0], [shift, shift], [shift, shift], [0, 0]], mode="SYMMETRIC")
    height, width = images.shape[1], images.shape[2]
    offsets = range(2 * shift + 1)
    residuals = [tf.reduce_mean(tf.abs(images - padded[:, dy:dy + height, dx:dx + width]), -1)
                 for dy in offsets for dx in offsets]
    return tf.reduce_min(tf.stack(residuals), axis=0) / (high - low)


def gaussian_kernel(sigma, truncate=4.0):
    """scipy.ndimage's normalised 1-D Gaussian of ``sigma`` (radius truncate * sigma)."""
    radius = int(truncate * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def map_score(maps, kind):
    """Image scores of anomaly maps (n, h, w) that fit small defects.

    'top1': the mean of each map's top 1 % pixels; 'smoothmax': the maximum of the map
    smoothed by a Gaussian of sigma 2 pixels (mirrored at the edges, as scipy's 'reflect').
    """
    maps = tf.convert_to_tensor(maps, tf.float32)
    if kind == "top1":
        pixels = maps.shape[1] * maps.shape[2]
        flat_maps = tf.reshape(maps, (-1, pixels))
        count = max(1, round(pixels * 0.01))
        return tf.reduce_mean(tf.math.top_k(flat_maps, count).values, axis=1)
    if kind == "smoothmax":
        taps = gaussian_kernel(2.0)
        radius = len(taps) // 2
        padded = tf.pad(maps[..., None], [[0, 0], [radius, radius], [radius, radius], [0, 0]],
                        mode="SYMMETRIC")
        smooth = tf.nn.conv2d(padded, taps.reshape(-1, 1, 1, 1), 1, "VALID")
        smooth = tf.nn.conv2d(smooth, taps.reshape(1, -1, 1, 1), 1, "VALID")
        return tf.reduce_max(flat(smooth), axis=1)
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
