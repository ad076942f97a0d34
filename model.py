"""AnoGAN and f-AnoGAN on the DCGAN of carpedm20/DCGAN-tensorflow, in TensorFlow 2.

Papers:
- DCGAN: Radford, Metz and Chintala, "Unsupervised Representation Learning with Deep
  Convolutional Generative Adversarial Networks", arXiv 1511.06434 (2015).
- AnoGAN: Schlegl, Seeböck, Waldstein, Schmidt-Erfurth and Langs, "Unsupervised Anomaly
  Detection with Generative Adversarial Networks to Guide Marker Discovery", IPMI 2017,
  arXiv 1703.05921.
- f-AnoGAN: Schlegl, Seeböck, Waldstein, Langs and Schmidt-Erfurth, "f-AnoGAN: Fast
  unsupervised anomaly detection with generative adversarial networks", Medical Image
  Analysis 54 (2019).

What this module owns (the networks are in networks.py, process concerns in runtime.py):
- the configurations ``ModelConfig``, ``TrainConfig`` and ``SearchConfig``, each checking its
  own fields;
- the losses and scores, pure functions: ``discriminator_loss`` and ``generator_loss`` (DCGAN),
  ``critic_loss``, ``wasserstein_generator_loss`` and ``gradient_penalty`` (WGAN-GP),
  ``anomaly_score`` (AnoGAN's (1 - lambda) R + lambda D), ``izif_score`` (f-AnoGAN's izi_f, also
  the encoder's training loss) and ``map_score`` (image scores of residual maps);
- ``DCGAN``: training (DCGAN: one D update, then two G updates; or WGAN-GP), encoder training
  with G and D frozen, the health check's samples, the batched latent-z search
  (``DCGAN.search``) and scoring (``DCGAN.score_batches``), checkpoints of every variable,
  sampling and the original's visualisations.
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

import health
import utils
from networks import (
    ConditionalDiscriminator,
    ConditionalGenerator,
    Discriminator,
    Encoder,
    Generator,
    variables_by_path,
)
from ops import LayerNorm, batch_norm, flat, frozen, halve
from runtime import CheckpointError, folder_lock, is_chief, stop_requests


class TrainingInterrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM after saving a checkpoint."""


class TrainingDiverged(Exception):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def check_fields(checks):
    """Raises ValueError with the message of the first failed (failed, message) check."""
    for failed, message in checks:
        if failed:
            raise ValueError(message)


GANS = ("dcgan", "wgan_gp")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The shapes that build a DCGAN; saved as ``config.json`` beside its checkpoints.

    ``classes``: the labels a conditional model is trained on (one-class MNIST: the normal
    digits); empty for all ``y_dim``. ``gan``: 'dcgan' (the original's losses, batch norm in D)
    or 'wgan_gp' (f-AnoGAN's WGAN-GP; layer norm in the critic D).
    """

    output_height: int
    output_width: int
    c_dim: int
    z_dim: int = 100
    y_dim: int = 0
    gf_dim: int = 64
    df_dim: int = 64
    gfc_dim: int = 1024
    dfc_dim: int = 1024
    classes: tuple = ()
    gan: str = "dcgan"

    def __post_init__(self):
        check_fields([
            (self.gan not in GANS, f"--gan must be one of {GANS}"),
            (min(self.output_height, self.output_width) < 8,
             "--output_height/width must be >= 8"),
            (self.c_dim not in (1, 3), "images must have 1 or 3 channels"),
            (min(self.z_dim, self.gf_dim, self.df_dim, self.gfc_dim, self.dfc_dim) < 1,
             "--z_dim/--gf_dim/--df_dim must be > 0"),
            (self.y_dim < 0, "--y_dim must be >= 0"),
            (not isinstance(self.classes, tuple)
             or any(c not in range(self.y_dim) for c in self.classes),
             f"the classes of a conditional model must be a tuple of labels below {self.y_dim}"),
        ])

    @property
    def conditions(self):
        """The labels a conditional model was trained on: ``classes``, else all ``y_dim``."""
        return self.classes or tuple(range(self.y_dim))

    def training_bytes(self, batch_size):
        """A lower bound of the memory (float32) one training step needs: the largest weights
        (G's projection, D's last layer) with Adam's two slots, and a batch of G's and D's
        feature maps, forward and backward."""
        sizes = [(self.output_height, self.output_width)]
        for _ in range(4):
            sizes.append(tuple(halve(s) for s in sizes[-1]))
        pixels = [h * w for h, w in sizes]
        weights = (self.z_dim + 1 + self.df_dim * 8 / self.gf_dim) * pixels[4] * self.gf_dim * 8
        maps = (pixels[0] * self.c_dim
                + sum(pixels[i] * self.gf_dim * 2 ** (i - 1) for i in range(1, 5))
                + sum(pixels[i] * self.df_dim * 2 ** (i - 1) for i in range(1, 5)))
        return int(4 * (3 * weights + 2 * batch_size * maps))

    def critic_norm(self, name):
        """D's normalisation layer: batch norm (DCGAN), or layer norm for WGAN-GP's critic,
        whose gradient penalty is per example."""
        return LayerNorm(name=name) if self.gan == "wgan_gp" else batch_norm(name=name)

    @property
    def value_range(self):
        """Pixel range of G's output: [0, 1] (sigmoid) when conditional, else [-1, 1]."""
        return (0.0, 1.0) if self.y_dim else (-1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters and output places of one training run (GAN and encoder).

    ``n_critic`` and ``gp_weight`` are WGAN-GP's: G is updated after every ``n_critic``-th
    critic update, and ``gp_weight`` weighs the gradient penalty. The encoder trains for
    ``encoder_epochs`` epochs but at least ``encoder_min_steps`` steps, so that small folders
    get a converged encoder too.
    """

    epochs: int = 25
    learning_rate: float = 0.0002
    beta1: float = 0.5
    beta2: float = 0.999
    n_critic: int = 5
    gp_weight: float = 10.0
    save_every: int = 500
    sample_every: int = 100
    sample_dir: str = "samples"
    log_dir: str = "logs"
    encoder_epochs: int = 3
    encoder_learning_rate: float = 0.00005
    encoder_kappa: float = 1.0
    encoder_min_steps: int = 250

    def __post_init__(self):
        check_fields([
            (self.epochs < 1, "--epoch must be positive"),
            (self.encoder_epochs < 1, "--encoder_epoch must be positive"),
            (self.encoder_min_steps < 0, "--encoder_min_steps must be >= 0"),
            (self.n_critic < 1, "--n_critic must be positive"),
            (not self.gp_weight >= 0, "--gp_weight must be >= 0"),
            (not 0.0 <= self.beta2 < 1.0, "--beta2 must be in [0, 1)"),
            (not min(self.learning_rate, self.encoder_learning_rate) > 0,
             "learning rates must be > 0"),
            (not 0.0 <= self.beta1 < 1.0, "--beta1 must be in [0, 1)"),
            (self.save_every < 1 or self.sample_every < 1,
             "--save_every/--sample_every must be > 0"),
            (not self.encoder_kappa >= 0, "--encoder_kappa must be >= 0"),
        ])

    def encoder_epochs_for(self, steps_per_epoch):
        """The encoder's epochs: ``encoder_epochs``, or more to reach ``encoder_min_steps``."""
        return max(self.encoder_epochs, math.ceil(self.encoder_min_steps / steps_per_epoch))


SCORES = ("anogan", "izif")
DIS_LOSSES = ("feature", "gan")
Z_INITS = ("random", "encoder")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The AnoGAN latent search: Adam on z for ``steps`` steps, then the anomaly score.

    ``z_init`` 'random' starts at U(-1, 1) (the original), 'encoder' at E(x) (f-AnoGAN);
    ``steps`` 0 scores the starting z. ``restarts`` starting points per image keep the lowest
    final score (with the encoder, the first start is E(x)); ``clip_z`` keeps z in [-1, 1]
    after each step. ``score`` 'anogan' is the original's (``anomaly_score``, weight
    ``ano_lambda``), 'izif' f-AnoGAN's (``izif_score``, weight ``kappa``). The defaults are
    the original's search.
    """

    steps: int = 100
    learning_rate: float = 0.001
    beta1: float = 0.5
    ano_lambda: float = 0.1
    dis_loss: str = "feature"
    restarts: int = 1
    clip_z: bool = False
    z_init: str = "random"
    score: str = "anogan"
    kappa: float = 1.0

    def __post_init__(self):
        check_fields([
            (self.steps < 0, "--test_epoch must be >= 0"),
            (not self.learning_rate > 0, "learning rates must be > 0"),
            (not 0.0 <= self.beta1 < 1.0, "--beta1 must be in [0, 1)"),
            (not 0.0 <= self.ano_lambda <= 1.0, "--ano_lambda must be in [0, 1]"),
            (self.dis_loss not in DIS_LOSSES, f"--dis_loss must be one of {DIS_LOSSES}"),
            (self.restarts < 1, "--test_restarts must be positive"),
            (self.z_init not in Z_INITS, f"--z_init must be one of {Z_INITS}"),
            (self.score not in SCORES, f"--score must be one of {SCORES}"),
            (self.score == "izif" and self.dis_loss != "feature",
             "--score izif compares D's features: leave --dis_loss at feature"),
            (not self.kappa >= 0, "--encoder_kappa must be >= 0"),
        ])

    @property
    def snapshot_steps(self):
        """The steps whose G(z) is kept: first, middle and last, as the original."""
        return 0, self.steps // 2, self.steps

    def scores(self, images, fakes, real_features, fake_features, fake_logits):
        """Per-image (score, residual, discrimination) of G(z) by this configuration's score."""
        if self.score == "izif":
            return izif_score(images, fakes, real_features, fake_features, self.kappa)
        return anomaly_score(images, fakes, real_features, fake_features, self.ano_lambda,
                             fake_logits if self.dis_loss == "gan" else None)


@dataclasses.dataclass
class SearchResult:
    """Numpy results of the latent search for one batch of images."""

    score: np.ndarray
    residual: np.ndarray
    discrimination: np.ndarray
    z: np.ndarray
    snapshots: dict

    @property
    def final(self):
        """G(z) at the search's last step."""
        return self.snapshots[max(self.snapshots)]

    def split(self, parts):
        """``parts`` results of consecutive equal slices of the batch."""
        def cut(values):
            return np.split(values, parts)

        return [SearchResult(*fields, dict(zip(self.snapshots, snaps)))
                for *fields, snaps in zip(cut(self.score), cut(self.residual),
                                          cut(self.discrimination), cut(self.z),
                                          zip(*map(cut, self.snapshots.values())))]

    @classmethod
    def best_of(cls, results):
        """Per image, the result with the lowest score (best label of a conditional G, or start)."""
        best = np.argmin(np.stack([r.score for r in results]), axis=0)
        rows = np.arange(len(best))

        def pick(values):
            return np.stack(values)[best, rows]

        return cls(pick([r.score for r in results]), pick([r.residual for r in results]),
                   pick([r.discrimination for r in results]), pick([r.z for r in results]),
                   {step: pick([r.snapshots[step] for r in results])
                    for step in results[0].snapshots})


# Losses and scores: pure functions of logits, images and D's features --------------------------

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


IMAGE_SCORES = ("sum", "top1", "smoothmax")


def anomaly_map(images, fakes, value_range):
    """Per pixel |x - G(z)| averaged over channels, in [0, 1]: (n, h, w)."""
    low, high = value_range
    return tf.reduce_mean(tf.abs(images - fakes), axis=-1) / (high - low)


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
        flat_maps = flat(maps)
        count = max(1, round(flat_maps.shape[1] * 0.01))
        return tf.reduce_mean(tf.math.top_k(flat_maps, count).values, axis=1)
    if kind == "smoothmax":
        taps = gaussian_kernel(2.0)
        radius = len(taps) // 2
        padded = tf.pad(maps[..., None], [[0, 0], [radius, radius], [radius, radius], [0, 0]],
                        mode="SYMMETRIC")
        smooth = tf.nn.conv2d(padded, taps.reshape(-1, 1, 1, 1), 1, "VALID")
        smooth = tf.nn.conv2d(smooth, taps.reshape(1, -1, 1, 1), 1, "VALID")
        return tf.reduce_max(flat(smooth), axis=1)
    raise ValueError(f"--image_score must be one of {IMAGE_SCORES}, not {kind!r}")


def columns(rows):
    """{name: [values]} of a list of {name: value} rows."""
    return {name: [row[name] for row in rows] for name in (rows[0] if rows else {})}


def checkpoint_candidates(manager, folder):
    """The checkpoints in ``folder``, newest first: the manager's latest, then every ckpt-N
    whose index file is there (so that a lost 'checkpoint' index file loses nothing)."""
    numbers = sorted((int(p.name[5:-6]) for p in Path(folder).glob("ckpt-*.index")
                      if p.name[5:-6].isdigit()), reverse=True)
    paths = [str(Path(folder) / f"ckpt-{n}") for n in numbers]
    latest = manager.latest_checkpoint
    if latest is not None:
        paths = [latest] + [p for p in paths if Path(p) != Path(latest)]
    return paths


def fresh_manager(checkpoint, folder):
    """A CheckpointManager of ``folder`` that rotates only the checkpoints this run writes:
    after a recovery the older ones stay (their index is kept as checkpoint.before-recovery)."""
    index = Path(folder) / "checkpoint"
    if index.exists():
        os.replace(index, index.with_name("checkpoint.before-recovery"))
    return tf.train.CheckpointManager(checkpoint, str(folder), 3)


def sample_inputs(config, count, seed=0):
    """The fixed (z, labels) of the training sample grids; labels cycle through the model's
    conditions."""
    z = np.random.default_rng(seed).uniform(-1, 1, (count, config.z_dim)).astype(np.float32)
    if config.y_dim:
        conditions = np.array(config.conditions)
        return z, utils.one_hot(conditions[np.arange(count) % len(conditions)], config.y_dim)
    return z, np.zeros((count, 0), np.float32)


HEALTH_SEED = 12345
"""Seed of the health check's G samples and search starts (fixed: its values compare across
epochs and runs)."""

HEALTH_SEARCH = SearchConfig(steps=50, learning_rate=0.03, clip_z=True, score="izif")
"""The short latent search E is compared with: izi_f's loss, 50 steps of 0.03 within G's prior."""


def starting_z(indices, z_dim, seed=0, restarts=1):
    """The latent search's U(-1, 1) starting z of each image index, reproducible from ``seed``.

    (batch, z_dim); with several ``restarts``, (restarts, batch, z_dim), the first as with one.
    """
    def draw(i, restart):
        key = [seed, i] if restart == 0 else [seed, i, restart]
        return np.random.default_rng(key).uniform(-1.0, 1.0, z_dim)

    z = np.array([[draw(i, r) for i in indices] for r in range(restarts)], np.float32)
    return z[0] if restarts == 1 else z


class DCGAN:
    """G, D and the encoder E, their optimisers and checkpoints, training, search and sampling.

    The GAN's checkpoints live in ``checkpoint_dir``, the encoder's in ``checkpoint_dir/encoder``
    (trained later, for one G: ``encoder_trained_for`` is the GAN step it was trained at).
    """

    def __init__(self, config, checkpoint_dir, train_config=None, strategy=None):
        self.config = config
        self.train_config = train_config or TrainConfig()
        self.strategy = strategy or tf.distribute.get_strategy()
        self.checkpoint_dir = Path(checkpoint_dir)
        conditional = config.y_dim > 0
        with self.strategy.scope():
            self.generator = (ConditionalGenerator if conditional else Generator)(config)
            self.discriminator = (ConditionalDiscriminator if conditional
                                  else Discriminator)(config)
            self.encoder = Encoder(config)
            cfg = self.train_config
            self.d_optim, self.g_optim = (
                keras.optimizers.Adam(cfg.learning_rate, beta_1=cfg.beta1, beta_2=cfg.beta2)
                for _ in range(2))
            self.e_optim = keras.optimizers.Adam(cfg.encoder_learning_rate, beta_1=0.5)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.encoder_step = tf.Variable(0, dtype=tf.int64, trainable=False,
                                            name="encoder_step")
            self.encoder_gan_step = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                                name="encoder_gan_step")
            self._build()
        self.checkpoint = tf.train.Checkpoint(
            models=variables_by_path(self.generator, self.discriminator),
            d_optim=self.d_optim, g_optim=self.g_optim, step=self.step)
        self.encoder_checkpoint = tf.train.Checkpoint(
            models=variables_by_path(self.encoder), optim=self.e_optim,
            step=self.encoder_step, gan_step=self.encoder_gan_step)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.checkpoint_dir), 3)
        self.encoder_manager = tf.train.CheckpointManager(
            self.encoder_checkpoint, str(self.checkpoint_dir / "encoder"), 3)
        self.statistics_missing = False
        self.health = {"gan": None, "encoder": None}
        self.training_seed = None
        self.warnings = []
        self._searches = {}
        self._lock_depth = 0

    @property
    def _learning_rates(self):
        """The configured learning rates of D, G and E, in that order."""
        cfg = self.train_config
        return cfg.learning_rate, cfg.learning_rate, cfg.encoder_learning_rate

    def _build(self):
        """Creates every variable now, so that a restore fills them all at once."""
        z = tf.zeros((1, self.config.z_dim))
        y = tf.zeros((1, self.config.y_dim))
        images = self.generator(z, y)
        self.discriminator(images, y)
        self.encoder(images, y)
        self.d_optim.build(self.discriminator.trainable_variables)
        self.g_optim.build(self.generator.trainable_variables)
        self.e_optim.build(self.encoder.trainable_variables)

    # Checkpoints -----------------------------------------------------------------------------

    @property
    def config_path(self):
        return self.checkpoint_dir / "config.json"

    def load(self):
        """Restores the latest checkpoint (and the encoder's, if any); False when there is none.

        A damaged newest checkpoint (or a lost 'checkpoint' index file) falls back to the
        newest intact one, with a line in ``warnings``. Raises ``CheckpointError`` when none
        can be restored or the checkpoint was built with other shapes. A checkpoint
        written before batch-norm statistics were saved restores its weights and sets
        ``statistics_missing`` (see ``estimate_statistics``). The optimisers keep their state
        but take this configuration's learning rates.
        """
        candidates = checkpoint_candidates(self.manager, self.checkpoint_dir)
        if not candidates:
            return False
        saved = self._check_config()
        self.health = {**self.health, **saved.get("health", {})}
        self.training_seed = saved.get("training_seed")
        self.statistics_missing, recovered = self._restore_newest_intact(self.checkpoint,
                                                                         candidates)
        if recovered:
            self.manager = fresh_manager(self.checkpoint, self.checkpoint_dir)
        encoder_candidates = checkpoint_candidates(self.encoder_manager,
                                                   self.checkpoint_dir / "encoder")
        if encoder_candidates:
            _, recovered = self._restore_newest_intact(self.encoder_checkpoint,
                                                       encoder_candidates)
            if recovered:
                self.encoder_manager = fresh_manager(self.encoder_checkpoint,
                                                     self.checkpoint_dir / "encoder")
        for optimizer, rate in zip((self.d_optim, self.g_optim, self.e_optim),
                                   self._learning_rates):
            optimizer.learning_rate.assign(rate)  # the configuration's, not the checkpoint's
        return True

    def _restore_newest_intact(self, checkpoint, candidates):
        """Restores the first of ``candidates`` (newest first) that restores; (what
        ``_restore`` returns, whether it recovered from damage or a lost index file). Each
        one passed over, and a lost index file, adds a warning."""
        problems = []
        for path in candidates:
            try:
                legacy = self._restore(checkpoint, path)
            except CheckpointError as error:
                problems.append(str(error))
                continue
            folder = Path(path).parent
            if problems:
                self.warnings.append(f"warning: {problems[0]}; restored {Path(path).name}, the "
                                     "newest intact checkpoint, instead")
            elif not (folder / "checkpoint").exists():
                self.warnings.append(f"warning: the 'checkpoint' index file in {folder} is "
                                     f"missing: restored {Path(path).name}, the newest "
                                     "checkpoint there")
            return legacy, bool(problems) or not (folder / "checkpoint").exists()
        raise CheckpointError(f"{problems[0]}; no older checkpoint in {Path(path).parent} "
                              "restores either: move the folder away to start afresh")

    def _check_config(self):
        """config.json's contents; ``CheckpointError`` when it describes another model or is
        not a JSON object."""
        if not self.config_path.exists():
            return {}
        try:
            saved = json.loads(self.config_path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{self.config_path} is not valid JSON ({error}): restore it "
                                  "or move the folder away") from None
        if not isinstance(saved, dict):
            raise CheckpointError(f"{self.config_path} holds {type(saved).__name__}, not a JSON "
                                  "object: restore it or move the folder away")
        wanted = json.loads(json.dumps(dataclasses.asdict(self.config)))  # tuples as lists
        differing = sorted(k for k in wanted if saved.get(k, wanted[k]) != wanted[k])
        if differing:
            details = ", ".join(f"{k}: checkpoint {saved.get(k)} vs now {wanted.get(k)}"
                                for k in differing)
            raise CheckpointError(f"checkpoint in {self.checkpoint_dir} was built with another "
                                  f"model ({details}): pass the flags it was trained with, or "
                                  "use another --checkpoint_dir")
        return saved

    @staticmethod
    def _restore(checkpoint, path):
        """Restores ``path`` into ``checkpoint``; True when it predates saved model variables.

        Such a checkpoint (written before this layout) holds the trainable weights only,
        through the optimisers; its batch-norm statistics stay at their initial values.
        """
        try:
            legacy = not any(name.startswith("models/")
                             for name, _ in tf.train.list_variables(path))
            status = checkpoint.restore(path)
            if legacy:
                status.expect_partial()
            else:
                status.assert_existing_objects_matched()
        except (AssertionError, IndexError, ValueError, tf.errors.OpError) as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise CheckpointError(f"cannot restore {path}: {reason}") from error
        return legacy

    @property
    def steps_done(self):
        """Training steps taken so far (restored with the checkpoint)."""
        return int(self.step.numpy())

    @property
    def encoder_steps_done(self):
        """Encoder training steps taken so far for the current G."""
        return int(self.encoder_step.numpy())

    @property
    def encoder_trained_for(self):
        """The GAN step the encoder was trained at, or None when it was never trained."""
        return int(self.encoder_gan_step.numpy()) if self.encoder_steps_done else None

    @property
    def encoder_ready(self):
        """Whether a trained encoder for the current G is there."""
        return self.encoder_trained_for == self.steps_done

    @property
    def is_chief(self):
        """Whether this process writes checkpoints and outputs (always, but for non-chief
        workers of a multi-worker strategy)."""
        return is_chief(self.strategy)

    @contextlib.contextmanager
    def exclusive(self):
        """Within: this process is the only one training into ``checkpoint_dir`` (re-entrant).

        Raises ``CheckpointError`` at once when another process trains there. Scoring needs no
        lock: checkpoints are written whole and then named.
        """
        if self._lock_depth or not self.is_chief:
            yield
            return
        with folder_lock(self.checkpoint_dir):
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1

    def save(self):
        """Writes a GAN checkpoint at the current step, and the model's config.json."""
        return self._save(self.checkpoint, self.manager, self.steps_done)

    def save_encoder(self):
        """Writes an encoder checkpoint at its current step, and the model's config.json."""
        return self._save(self.encoder_checkpoint, self.encoder_manager, self.encoder_steps_done)

    def _save(self, checkpoint, manager, number):
        """Every worker must call this (saving is collective); non-chief workers write to a
        temporary folder that is removed at once."""
        if not self.is_chief:
            with tempfile.TemporaryDirectory() as scratch:
                tf.train.CheckpointManager(checkpoint, scratch, 1).save()
            return None
        with self.exclusive():
            path = manager.save(checkpoint_number=number)
            self.write_config()
        return path

    def set_aside(self, name):
        """Moves this training's checkpoints and config.json into the sub-folder ``name`` (a
        failed training kept for inspection); the folder then holds no checkpoint. Returns it."""
        target = self.checkpoint_dir / name
        with self.exclusive():
            target.mkdir(parents=True, exist_ok=True)
            prefixes = [Path(path).name for path in self.manager.checkpoints]
            for path in self.checkpoint_dir.iterdir():
                if path.is_file() and (path.name in ("checkpoint", "config.json")
                                       or path.name.split(".")[0] in prefixes):
                    os.replace(path, target / path.name)
        return target

    def write_config(self):
        """Writes config.json: the model's shapes, the seed it was trained with, its encoder
        and the training health."""
        encoder = None if self.encoder_trained_for is None else {
            "steps": self.encoder_steps_done, "trained_for_step": self.encoder_trained_for,
            "kappa": self.train_config.encoder_kappa}
        utils.write_json(self.config_path, {
            **dataclasses.asdict(self.config), "training_seed": self.training_seed,
            "encoder": encoder, "health": self.health})

    # Training --------------------------------------------------------------------------------

    def _discriminator_loss(self, images, labels, z, average):
        """D's loss on a real batch and G's batch from ``z``, both networks in training mode."""
        real_logits, _ = self.discriminator(images, labels, training=True)
        fake = self.generator(z, labels, training=True)
        fake_logits, _ = self.discriminator(fake, labels, training=True)
        return average(discriminator_loss(real_logits, fake_logits))

    def _generator_loss(self, labels, z, average):
        """G's loss on its batch from ``z``, both networks in training mode."""
        fake_logits, _ = self.discriminator(self.generator(z, labels, training=True), labels,
                                            training=True)
        return average(generator_loss(fake_logits))

    def _train_step(self, images, labels, z, global_batch):
        """One D update, then two G updates on the same z (the original's schedule)."""
        if self.config.gan == "wgan_gp":
            return self._wgan_gp_step(images, labels, z, global_batch)
        def average(losses):
            return tf.nn.compute_average_loss(losses, global_batch_size=global_batch)

        with tf.GradientTape() as tape:
            d_loss = self._discriminator_loss(images, labels, z, average)
        variables = self.discriminator.trainable_variables
        self.d_optim.apply_gradients(zip(tape.gradient(d_loss, variables), variables))
        g_loss = tf.constant(0.0)
        for _ in range(2):
            with tf.GradientTape() as tape:
                g_loss = self._generator_loss(labels, z, average)
            variables = self.generator.trainable_variables
            self.g_optim.apply_gradients(zip(tape.gradient(g_loss, variables), variables))
        return {"d_loss": d_loss, "g_loss": g_loss}

    def _wgan_gp_step(self, images, labels, z, global_batch):
        """One critic update with the gradient penalty; after every ``n_critic``-th, one G update
        (f-AnoGAN's WGAN-GP schedule). g_loss is G's loss before its update."""
        cfg = self.train_config

        def average(losses):
            return tf.nn.compute_average_loss(losses, global_batch_size=global_batch)

        def critic(inputs):
            return self.discriminator(inputs, labels, training=True)[0]

        alpha = tf.random.uniform((tf.shape(images)[0], 1, 1, 1))
        with tf.GradientTape() as tape:
            fakes = self.generator(z, labels, training=True)
            real_logits, fake_logits = critic(images), critic(fakes)
            penalty = gradient_penalty(critic, images, fakes, alpha)
            d_loss = average(critic_loss(real_logits, fake_logits) + cfg.gp_weight * penalty)
        variables = self.discriminator.trainable_variables
        self.d_optim.apply_gradients(zip(tape.gradient(d_loss, variables), variables))
        g_loss = average(wasserstein_generator_loss(fake_logits))
        if (self.step + 1) % cfg.n_critic == 0:
            with tf.GradientTape() as tape:
                g_loss = average(wasserstein_generator_loss(critic(
                    self.generator(z, labels, training=True))))
            variables = self.generator.trainable_variables
            self.g_optim.apply_gradients(zip(tape.gradient(g_loss, variables), variables))
        return {"d_loss": d_loss, "g_loss": g_loss, "gradient_penalty": average(penalty)}

    def _replay_step(self, images, labels, z, global_batch):
        """The training step's forward passes without updates: moves only batch-norm statistics."""
        def average(losses):
            return tf.nn.compute_average_loss(losses, global_batch_size=global_batch)

        losses = {"d_loss": self._discriminator_loss(images, labels, z, average)}
        for _ in range(2):
            losses["g_loss"] = self._generator_loss(labels, z, average)
        return losses

    def _encoder_step(self, images, labels, global_batch):
        """One update of E on the izi_f loss; G and D are fixed and in inference mode."""
        kappa = self.train_config.encoder_kappa
        with frozen(self.generator, self.discriminator):
            _, real_features = self.discriminator(images, labels, training=False)
            with tf.GradientTape() as tape:
                fakes = self.generator(self.encoder(images, labels, training=True), labels,
                                       training=False)
                _, fake_features = self.discriminator(fakes, labels, training=False)
                score, residual, features = izif_score(images, fakes, real_features,
                                                       fake_features, kappa)
                loss = tf.nn.compute_average_loss(score, global_batch_size=global_batch)
        variables = self.encoder.trainable_variables
        self.e_optim.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return {"encoder_loss": loss,
                "encoder_residual": tf.nn.compute_average_loss(residual,
                                                               global_batch_size=global_batch),
                "encoder_features": tf.nn.compute_average_loss(features,
                                                               global_batch_size=global_batch)}

    def _distributed(self, step_fn, counter, global_batch):
        """A compiled step running ``step_fn`` on every replica, summing its losses and
        advancing ``counter`` (None: a step that is not counted)."""
        @tf.function
        def step(*batch):
            losses = self.strategy.run(step_fn, args=(*batch, global_batch))
            if counter is not None:
                counter.assign_add(1)
            return {name: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                    for name, value in losses.items()}
        return step

    def train_step_fn(self, batch_size):
        """The compiled training step on a global batch of (images, labels, z): {loss: value}."""
        return self._distributed(self._train_step, self.step, batch_size)

    def train(self, dataset, steps_per_epoch, batch_size, sample_inputs, seed=0, reals=None):
        """Trains G and D until ``epochs`` epochs of ``steps_per_epoch`` batches are done.

        ``dataset`` yields (images, labels) batches of ``batch_size`` and is iterated once per
        epoch; ``sample_inputs`` is the fixed (z, labels) of the sample grids. Resumes from
        ``self.step``. With ``reals`` (``health.RealImages``) G's health is checked at every
        epoch's end (``self.health['gan']``). Returns the (d_loss, g_loss) of each step of this
        run.
        """
        self.training_seed = seed

        def samples(epoch, index, writer):
            return self.save_samples(sample_inputs, epoch, index, writer)

        def epoch_end(writer):
            if reals is None:
                return ""
            result = self._record_health("gan", self.gan_health(reals), writer, self.steps_done)
            return ", " + health.summary_line(result)

        return self._fit(lambda epoch: self._with_noise(dataset, seed + epoch), steps_per_epoch,
                         self.train_config.epochs, self.train_step_fn(batch_size),
                         lambda: self.steps_done, self.save, samples, "", epoch_end)

    def gan_health(self, reals):
        """G's health verdict (``health.gan_measures``) against the real images ``reals``."""
        z, labels = sample_inputs(self.config, len(reals.queries), HEALTH_SEED)
        fakes = self.generate(z, labels)
        return health.verdict(health.gan_measures(
            reals.unit(fakes), reals.unit(reals.queries), reals.unit(reals.references)))

    def encoder_health(self, reals):
        """E's health verdict (``health.encoder_measures``) on the held-out images of ``reals``:
        G(E(x)) against the mean training image and against a short search from random z."""
        images, labels = reals.held_out, reals.held_out_labels
        reconstructions = self.generate(self.encode(images, labels).numpy(), labels)
        z0 = starting_z(range(len(images)), self.config.z_dim, HEALTH_SEED)
        searched = self.search(images, labels, z0, HEALTH_SEARCH).final
        return health.verdict(health.encoder_measures(
            reals.unit(images), reals.unit(reconstructions), reals.unit(searched),
            reals.unit(reals.references)))

    def _record_health(self, part, result, writer, step):
        """Keeps a health verdict (saved in config.json) and logs its values to TensorBoard."""
        self.health[part] = result
        with writer.as_default(step=step):
            for name, value in result.items():
                if isinstance(value, float):
                    tf.summary.scalar(f"health/{name}", value)
            tf.summary.scalar(f"health/{part}_passed", float(result["passed"]))
        return result

    def check_health(self, reals, part):
        """Runs and records one health check ('gan' or 'encoder') outside training."""
        check = self.gan_health if part == "gan" else self.encoder_health
        writer = tf.summary.create_file_writer(self.train_config.log_dir)
        step = self.steps_done if part == "gan" else self.encoder_steps_done
        result = self._record_health(part, check(reals), writer, step)
        writer.close()
        return result

    def train_encoder(self, dataset, steps_per_epoch, batch_size, sample_images, reals=None):
        """Trains E with G and D frozen for ``encoder_epochs_for(steps_per_epoch)`` epochs
        (izi_f loss).

        Starts over (from E's current weights) when E was trained for another G. Grids of
        ``sample_images`` beside G(E(x)) go to the sample folder. With ``reals``, E's health is
        checked at the end (``self.health['encoder']``). Returns the losses of each step of
        this run.
        """
        if self.encoder_trained_for not in (None, self.steps_done):
            self.encoder_step.assign(0)
        self.encoder_gan_step.assign(self.steps_done)
        images, labels = sample_images

        def samples(epoch, index, writer):
            return self.save_reconstructions(images, labels, epoch, index, writer)

        epochs = self.train_config.encoder_epochs_for(steps_per_epoch)
        history = self._fit(lambda epoch: dataset, steps_per_epoch, epochs,
                            self._distributed(self._encoder_step, self.encoder_step, batch_size),
                            lambda: self.encoder_steps_done, self.save_encoder, samples,
                            "encoder ", lambda writer: "")
        if reals is not None and self.is_chief:
            self.check_health(reals, "encoder")
            self.write_config()
        return history

    def estimate_statistics(self, dataset, batch_size, batches=50, seed=0):
        """Re-estimates G's and D's batch-norm moving statistics at the current weights.

        Replays the training step's forward passes (no weight update) on ``batches`` batches of
        ``dataset``; for checkpoints saved without the statistics.
        """
        replay = self._distributed(self._replay_step, None, batch_size)
        for batch in self.strategy.experimental_distribute_dataset(
                self._with_noise(dataset.repeat(), seed).take(batches)):
            replay(*batch)
        self.statistics_missing = False

    def _fit(self, epoch_batches, steps_per_epoch, epochs, step_fn, steps_done, save, samples,
             label, epoch_end):
        """The training loop of the GAN and of the encoder.

        ``epoch_batches(epoch)`` is the dataset of an epoch; ``step_fn`` one compiled step on a
        batch, advancing ``steps_done()``; ``save()`` writes a checkpoint and ``samples(epoch,
        index, writer)`` a sample grid (every ``sample_every`` steps, at the end of every epoch
        and when training stops); ``epoch_end(writer)`` adds to the line printed after each
        epoch. Resumes from ``steps_done()``; stops between steps on SIGINT/SIGTERM after
        saving. Returns the losses of each step of this run.
        """
        cfg = self.train_config
        writer = (tf.summary.create_file_writer(cfg.log_dir) if self.is_chief
                  else tf.summary.create_noop_writer())
        sampled = None

        def sample(epoch):
            nonlocal sampled
            step = steps_done()
            if self.is_chief and sampled != step:
                samples(epoch, step - epoch * steps_per_epoch, writer)
                sampled = step

        def after_step(epoch, stop):
            step = steps_done()
            if step % cfg.sample_every == 0:
                sample(epoch)
            if step % cfg.save_every == 0:
                save()
            if stop.is_set():
                raise KeyboardInterrupt

        history = []
        epoch = steps_done() // steps_per_epoch
        with self.exclusive():
            try:
                with stop_requests() as stop:
                    while epoch < epochs:
                        done = steps_done() - epoch * steps_per_epoch
                        batches = self.strategy.experimental_distribute_dataset(
                            epoch_batches(epoch).take(steps_per_epoch - done))
                        losses = []
                        with tqdm(batches, total=steps_per_epoch, initial=done, unit="step",
                                  desc=f"{label}epoch {epoch + 1}/{epochs}", leave=False) as bar:
                            for batch in bar:
                                losses.append(self._logged_step(step_fn, batch, steps_done,
                                                                writer, bar))
                                after_step(epoch, stop)
                        sample(epoch)
                        history += losses
                        tqdm.write(f"{label}epoch {epoch + 1}/{epochs} done: step {steps_done()}"
                                   + "".join(f", mean {name} {np.mean(values):.4f}"
                                             for name, values in columns(losses).items())
                                   + (epoch_end(writer) if self.is_chief else ""))
                        epoch += 1
            except KeyboardInterrupt:
                sample(min(epoch, epochs - 1))
                path = save()
                raise TrainingInterrupted(f"interrupted at step {steps_done()}; saved {path}: "
                                          "run again to resume") from None
            except OSError:
                save()  # an output that cannot be written loses no training
                raise
            save()
        writer.flush()
        return [tuple(step.values()) for step in history]

    def _logged_step(self, step_fn, batch, steps_done, writer, bar):
        """Runs one step; logs its losses to TensorBoard and the bar; stops on non-finite ones."""
        losses = {name: float(value) for name, value in step_fn(*batch).items()}
        step = steps_done()
        if not all(math.isfinite(value) for value in losses.values()):
            kept = self.manager.latest_checkpoint
            raise TrainingDiverged(
                f"losses became non-finite at step {step} ("
                + ", ".join(f"{k} {v}" for k, v in losses.items()) + "); "
                + (f"the last good checkpoint {kept} is kept" if kept else
                   f"no checkpoint was written to {self.checkpoint_dir}")
                + ": lower --learning_rate")
        bar.set_postfix({name: f"{value:.4f}" for name, value in losses.items()})
        with writer.as_default(step=step):
            for name, value in losses.items():
                tf.summary.scalar(name, value)
        return losses

    def _with_noise(self, dataset, seed):
        """Adds a U(-1, 1) z batch to every (images, labels) batch, reproducible from ``seed``."""
        z_dim = self.config.z_dim

        def add_z(index, batch):
            images, labels = batch
            z = tf.random.stateless_uniform((tf.shape(images)[0], z_dim), seed=[seed, index],
                                            minval=-1.0, maxval=1.0)
            return images, labels, z

        return dataset.enumerate().map(add_z)

    # Anomaly detection -----------------------------------------------------------------------

    def fake_scores(self, images, labels, z, real_features, config):
        """Per-image (score, residual, discrimination) of G(z) against ``images``, and G(z)."""
        fakes = self.generator(z, labels, training=False)
        logits, features = self.discriminator(fakes, labels, training=False)
        return (*config.scores(images, fakes, real_features, features, logits), fakes)

    def _adam_steps(self, images, labels, z, real_features, config):
        """``config.steps`` (> 0) Adam steps on z; the final z and G(z) at the first and middle
        snapshot steps.

        Adam (``adam_update``) starts from fresh state for every batch inside one graph. The
        loss is the sum of per-image scores, so images do not interact and a batch equals its
        single images.
        """
        _, middle, last = config.snapshot_steps
        m, v = tf.zeros_like(z), tf.zeros_like(z)
        first = mid = tf.zeros_like(images)
        for t in tf.range(last):
            with tf.GradientTape() as tape:
                tape.watch(z)
                score, _, _, fakes = self.fake_scores(images, labels, z, real_features, config)
                total = tf.reduce_sum(score)
            if t == 0:
                first = fakes
            if t == middle:
                mid = fakes
            z, m, v = adam_update(z, tape.gradient(total, z), m, v, t, config)
        return z, first, mid

    def _search_graph(self, config):
        """A compiled whole search for one batch: ``config.steps`` Adam steps on z, then the
        scores at the final z.

        The weights are fixed, so the convolutions' transposed filters are prepared once; any
        batch size runs the same graph (traced once). A 0-step search (scoring at the starting
        z) has no loop in its graph.
        """
        _, middle, last = config.snapshot_steps
        cfg = self.config
        signature = [tf.TensorSpec((None, cfg.output_height, cfg.output_width, cfg.c_dim)),
                     tf.TensorSpec((None, cfg.y_dim)), tf.TensorSpec((None, cfg.z_dim))]

        @tf.function(input_signature=signature)
        def run(images, labels, z):
            with frozen(self.generator, self.discriminator):
                _, real_features = self.discriminator(images, labels, training=False)
                if last:
                    z, first, mid = self._adam_steps(images, labels, z, real_features, config)
                score, residual, discrimination, fakes = self.fake_scores(
                    images, labels, z, real_features, config)
                if not last:
                    first = fakes
                if middle == last:
                    mid = fakes
                return score, residual, discrimination, z, first, mid, fakes

        return run

    def search(self, images, labels, z0, config):
        """Searches z for a batch of images from the starting ``z0``; a ``SearchResult``.

        ``z0`` is (batch, z_dim), or (restarts, batch, z_dim): then each image is searched
        from all its starting points in one larger batch, and its lowest score is kept. With
        ``config.z_init`` 'encoder' the first start is E(x). ``labels`` are one-hot rows for a
        conditional model; when they have no columns the search runs once per label the model
        was trained on (``config.conditions``) and keeps each image's lowest score.
        """
        images = tf.convert_to_tensor(images, tf.float32)
        labels = tf.convert_to_tensor(labels, tf.float32)
        starts = tf.convert_to_tensor(z0, tf.float32)
        if self.config.y_dim and labels.shape[1] == 0:
            count = tf.shape(images)[0]
            return SearchResult.best_of([
                self.search(images, tf.one_hot(tf.fill([count], k), self.config.y_dim), z0,
                            config)
                for k in self.config.conditions])
        if starts.shape.rank == 2:
            starts = starts[None]
        if config.z_init == "encoder":
            starts = tf.concat([self.encode(images, labels)[None], starts[1:]], axis=0)
        restarts = starts.shape[0]
        outputs = self._search_fn(config)(
            tf.tile(images, [restarts, 1, 1, 1]), tf.tile(labels, [restarts, 1]),
            tf.reshape(starts, [-1, self.config.z_dim]))
        score, residual, discrimination, z, *snapshots = (value.numpy() for value in outputs)
        result = SearchResult(score, residual, discrimination, z,
                              dict(zip(config.snapshot_steps, snapshots)))
        return result if restarts == 1 else SearchResult.best_of(result.split(restarts))

    def _on_replicas(self, fn):
        """``fn`` run on contiguous slices of its batch per replica, outputs gathered in order.

        Each replica (over all workers) searches its own images; every process gets all
        results back. With one replica this is ``fn`` itself.
        """
        replicas = self.strategy.num_replicas_in_sync
        if replicas == 1:
            return fn

        def replica_fn(*batch):
            context = tf.distribute.get_replica_context()
            bounds = tf.range(replicas + 1) * tf.shape(batch[0])[0] // replicas
            replica = context.replica_id_in_sync_group
            first, last = bounds[replica], bounds[replica + 1]
            outputs = fn(*(tensor[first:last] for tensor in batch))
            return [context.all_gather(output, axis=0) for output in outputs]

        @tf.function(reduce_retracing=True)
        def run(*batch):
            outputs = self.strategy.run(replica_fn, args=batch)
            return [self.strategy.experimental_local_results(output)[0] for output in outputs]

        return run

    def _search_fn(self, config):
        """The compiled search for ``config``, built once per configuration."""
        # Restarts only widen the batch, and the starting z comes in: neither changes the graph.
        config = dataclasses.replace(config, restarts=1, z_init="random")
        if config not in self._searches:
            self._searches[config] = self._on_replicas(self._search_graph(config))
        return self._searches[config]

    def score_batches(self, dataset, config, total_batches=None, seed=0):
        """Yields (images, ``SearchResult``) per batch of ``dataset`` ((images, labels) batches).

        Image i starts from its own U(-1, 1) z drawn from (``seed``, i) (or from E(x)), so its
        result does not depend on the batch size.
        """
        start = 0
        random_starts = config.restarts > 1 or config.z_init == "random"
        for images, labels in tqdm(dataset, total=total_batches, desc="anomaly search",
                                   unit="batch"):
            count = int(tf.shape(images)[0])
            z0 = (starting_z(range(start, start + count), self.config.z_dim, seed,
                             config.restarts) if random_starts
                  else np.zeros((count, self.config.z_dim), np.float32))  # replaced by E(x)
            start += count
            yield images.numpy(), self.search(images, labels, z0, config)

    # Sampling --------------------------------------------------------------------------------

    @functools.cached_property
    def _encode_fn(self):
        cfg = self.config
        return tf.function(
            lambda images, labels: self.encoder(images, labels, training=False),
            input_signature=[tf.TensorSpec((None, cfg.output_height, cfg.output_width, cfg.c_dim)),
                             tf.TensorSpec((None, cfg.y_dim))])

    def encode(self, images, labels):
        """E(x) in inference mode, a (batch, z_dim) tensor."""
        return self._encode_fn(tf.convert_to_tensor(images, tf.float32),
                               tf.convert_to_tensor(labels, tf.float32))

    def generate(self, z, labels=None):
        """G(z) in inference mode (batch-norm moving statistics)."""
        labels = np.zeros((len(z), 0), np.float32) if labels is None else labels
        return self.generator(tf.convert_to_tensor(z, tf.float32),
                              tf.convert_to_tensor(labels, tf.float32), training=False).numpy()

    def _write_grid(self, images, path, writer, tag, step, shape=None):
        """Saves ``images`` (the model's value range) as a grid PNG and a TensorBoard image."""
        utils.save_images(images, path, shape, value_range=self.config.value_range)
        if writer is not None:
            low, high = self.config.value_range
            with writer.as_default(step=step):
                tf.summary.image(tag, (images - low) / (high - low), max_outputs=8)
        return path

    def save_samples(self, sample_inputs, epoch, index, writer=None):
        """Writes the grid of G on the fixed sample inputs, as the original's train_XX_XXXX.png."""
        path = Path(self.train_config.sample_dir) / f"train_{epoch:02d}_{index:04d}.png"
        return self._write_grid(self.generate(*sample_inputs), path, writer, "samples",
                                self.steps_done)

    def save_reconstructions(self, images, labels, epoch, index, writer=None):
        """Writes x beside G(E(x)), four pairs a row, as encoder_XX_XXXX.png."""
        fakes = self.generate(self.encode(images, labels).numpy(), labels)
        pairs = np.stack([images, fakes], axis=1).reshape(-1, *images.shape[1:])
        path = Path(self.train_config.sample_dir) / f"encoder_{epoch:02d}_{index:04d}.png"
        shape = (math.ceil(len(images) / 4), 2 * min(len(images), 4))
        return self._write_grid(pairs, path, writer, "reconstructions",
                                self.encoder_steps_done, shape)

    def visualize(self, option, sample_dir, batch_size, seed=0):
        """The original's visualisations of a trained G; returns the written paths."""
        rng = np.random.default_rng(seed)
        z_dim, sample_dir = self.config.z_dim, Path(sample_dir)
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime())
        values = np.arange(0, 1, 1.0 / batch_size)[:batch_size]

        def labels():
            if not self.config.y_dim:
                return None
            return utils.one_hot(rng.choice(self.config.conditions, batch_size),
                                 self.config.y_dim)

        def sweep(dim, base):
            z = base.copy()
            z[:, dim] = values
            return self.generate(z, labels())

        value_range = self.config.value_range
        paths = []
        if option == 0:
            z = rng.uniform(-0.5, 0.5, (batch_size, z_dim))
            paths.append(sample_dir / f"test_{stamp}.png")
            utils.save_images(self.generate(z, labels()), paths[-1], value_range=value_range)
        elif option == 1:
            for dim in range(z_dim):
                paths.append(sample_dir / f"test_arange_{dim}.png")
                utils.save_images(sweep(dim, rng.uniform(-1, 1, (batch_size, z_dim))),
                                  paths[-1], value_range=value_range)
        elif option == 2:
            for dim in rng.integers(0, z_dim, z_dim):
                base = np.tile(rng.uniform(-0.2, 0.2, (1, z_dim)), (batch_size, 1))
                paths.append(sample_dir / f"test_gif_{dim}.gif")
                utils.save_gif(sweep(dim, base), paths[-1], value_range=value_range)
        elif option in (3, 4):
            sweeps = [sweep(dim, np.zeros((batch_size, z_dim))) for dim in range(z_dim)]
            if option == 3:
                for dim, frames in enumerate(sweeps):
                    paths.append(sample_dir / f"test_gif_{dim}.gif")
                    utils.save_gif(frames, paths[-1], value_range=value_range)
            else:
                low, high = value_range
                shape = utils.grid_shape(z_dim)
                frames = [utils.merge((np.stack([s[i] for s in sweeps]) - low) / (high - low),
                                      shape) for i in range(batch_size)]
                paths.append(sample_dir / "test_gif_merged.gif")
                utils.save_gif(frames, paths[-1], duration=8, value_range=(0.0, 1.0))
        else:
            raise ValueError(f"unknown visualize option {option}")
        return paths
