"""The networks of the original DCGAN (carpedm20/DCGAN-tensorflow) and f-AnoGAN's encoder.

``Generator`` and ``Discriminator`` (its last conv block is AnoGAN's feature layer f; layer
norm instead of batch norm for WGAN-GP's critic), their class-conditional MNIST variants, and
``Encoder`` (image -> z). Each takes a ``ModelConfig``; ``make_networks`` builds the three.
"""

import math

import keras
import tensorflow as tf

from ops import (
    Deconv2D,
    LayerNorm,
    batch_norm,
    conv2d,
    conv_cond_concat,
    flat,
    halve,
    linear,
    lrelu,
)


def critic_norm(config):
    """D's normalisation layer factory: batch norm (DCGAN), or layer norm for WGAN-GP's critic,
    whose gradient penalty is per example."""
    return LayerNorm if config.gan == "wgan_gp" else batch_norm


class Generator(keras.Model):
    """z -> image: linear to (s/16, s/16, gf*8), three BN+ReLU deconvs, tanh deconv."""

    def __init__(self, config):
        super().__init__(name="generator")
        sizes = [(config.output_height, config.output_width)]
        for _ in range(4):
            sizes.append(tuple(halve(s) for s in sizes[-1]))
        self.start_shape = (*sizes[4], config.gf_dim * 8)
        self.project = linear(math.prod(self.start_shape), name="g_h0_lin")
        self.bns = [batch_norm(name=f"g_bn{i}") for i in range(4)]
        self.deconvs = [
            Deconv2D(config.gf_dim * 4, sizes[3], name="g_h1"),
            Deconv2D(config.gf_dim * 2, sizes[2], name="g_h2"),
            Deconv2D(config.gf_dim, sizes[1], name="g_h3"),
            Deconv2D(config.c_dim, sizes[0], name="g_h4"),
        ]

    def call(self, z, y=None, training=False):
        h = tf.reshape(self.project(z), (-1, *self.start_shape))
        for deconv, bn in zip([None, *self.deconvs[:3]], self.bns):
            if deconv is not None:
                h = deconv(h)
            h = tf.nn.relu(bn(h, training=training))
        return tf.tanh(self.deconvs[3](h))


class Discriminator(keras.Model):
    """image -> (logits, features): four strided convs (BN after the first), linear to ``units``.

    ``features`` is the last conv block, the f(x) of AnoGAN's feature matching.
    """

    def __init__(self, config, units=1, prefix="d", name="discriminator", norm=None):
        super().__init__(name=name)
        self.convs = [conv2d(config.df_dim * 2 ** i, name=f"{prefix}_h{i}_conv")
                      for i in range(4)]
        norm = norm or critic_norm(config)
        self.bns = [None] + [norm(name=f"{prefix}_bn{i}") for i in range(1, 4)]
        self.logit = linear(units, name=f"{prefix}_h4_lin")

    def call(self, images, y=None, training=False):
        h = images
        for conv, bn in zip(self.convs, self.bns):
            h = conv(h)
            h = lrelu(h if bn is None else bn(h, training=training))
        return self.logit(flat(h)), h


class Encoder(Discriminator):
    """image (with its one-hot label when conditional) -> z in [-1, 1]: f-AnoGAN's E.

    D's strided conv stack with ``z_dim`` tanh outputs (the paper's 'tanh_fc' encoder).
    """

    def __init__(self, config):
        super().__init__(config, units=config.z_dim, prefix="e", name="encoder", norm=batch_norm)

    def call(self, images, y=None, training=False):
        if y is not None and y.shape[-1]:
            images = conv_cond_concat(images, y)
        logits, _ = super().call(images, training=training)
        return tf.tanh(logits)


class ConditionalGenerator(keras.Model):
    """(z, y) -> image in [0, 1]: the original's class-conditional MNIST generator."""

    def __init__(self, config):
        super().__init__(name="generator")
        self.size2 = tuple(halve(s) for s in (config.output_height, config.output_width))
        self.size4 = tuple(halve(s) for s in self.size2)
        self.fc0 = linear(config.gfc_dim, name="g_h0_lin")
        self.fc1 = linear(config.gf_dim * 2 * math.prod(self.size4), name="g_h1_lin")
        self.deconv2 = Deconv2D(config.gf_dim * 2, self.size2, name="g_h2")
        self.deconv3 = Deconv2D(config.c_dim, (config.output_height, config.output_width),
                                name="g_h3")
        self.bns = [batch_norm(name=f"g_bn{i}") for i in range(3)]
        self.gf_dim = config.gf_dim

    def call(self, z, y=None, training=False):
        h = tf.nn.relu(self.bns[0](self.fc0(tf.concat([z, y], 1)), training=training))
        h = tf.nn.relu(self.bns[1](self.fc1(tf.concat([h, y], 1)), training=training))
        h = conv_cond_concat(tf.reshape(h, (-1, *self.size4, self.gf_dim * 2)), y)
        h = tf.nn.relu(self.bns[2](self.deconv2(h), training=training))
        return tf.sigmoid(self.deconv3(conv_cond_concat(h, y)))


class ConditionalDiscriminator(keras.Model):
    """(image, y) -> (logit, features): the original's class-conditional MNIST discriminator.

    ``features`` is its fully connected layer after batch norm and leaky ReLU (``d_h2_lin``),
    the original's ``feature_match_layer`` for this model.
    """

    def __init__(self, config):
        super().__init__(name="discriminator")
        self.conv0 = conv2d(config.c_dim + config.y_dim, name="d_h0_conv")
        self.conv1 = conv2d(config.df_dim + config.y_dim, name="d_h1_conv")
        self.fc2 = linear(config.dfc_dim, name="d_h2_lin")
        self.logit = linear(1, name="d_h3_lin")
        self.bn1 = critic_norm(config)(name="d_bn1")
        self.bn2 = critic_norm(config)(name="d_bn2")

    def call(self, images, y=None, training=False):
        h = lrelu(self.conv0(conv_cond_concat(images, y)))
        h = lrelu(self.bn1(self.conv1(conv_cond_concat(h, y)), training=training))
        features = lrelu(self.bn2(self.fc2(tf.concat([flat(h), y], 1)), training=training))
        return self.logit(tf.concat([features, y], 1)), features


def variables_by_path(*models):
    """Every variable of ``models``, trainable or not (batch-norm statistics), by its path.

    Keras 3 models expose no variables to ``tf.train.Checkpoint``; a dict of them does.
    """
    return {variable.path: variable for model in models for variable in model.variables}


def make_networks(config):
    """G, D and E of ``config`` (the conditional ones when ``config.y_dim``), with every
    variable created, so that a restore fills them all at once."""
    conditional = config.y_dim > 0
    generator = (ConditionalGenerator if conditional else Generator)(config)
    discriminator = (ConditionalDiscriminator if conditional else Discriminator)(config)
    encoder = Encoder(config)
    z, y = tf.zeros((1, config.z_dim)), tf.zeros((1, config.y_dim))
    images = generator(z, y)
    discriminator(images, y)
    encoder(images, y)
    return generator, discriminator, encoder
