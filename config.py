"""The configurations, each checking its own fields: ``ModelConfig`` (the shapes that build a
DCGAN, saved beside its checkpoints), ``TrainConfig`` (one training run of the GAN and encoder)
and ``SearchConfig`` (the AnoGAN latent search and its score)."""

import dataclasses
import math

from losses import RESIDUAL_MAPS, anomaly_score, izif_score
from ops import halve


def check_fields(checks):
    """Raises ValueError with the message of the first failed (failed, message) check."""
    for failed, message in checks:
        if failed:
            raise ValueError(message)


GANS = ("dcgan", "wgan_gp")
ADAM_DEFAULTS = {"dcgan": (0.0002, 0.5, 0.999), "wgan_gp": (0.0001, 0.0, 0.9)}
"""Each GAN's Adam (learning rate, beta1, beta2) for G and D: the original's DCGAN, and
f-AnoGAN's WGAN-GP."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The shapes that build a DCGAN; saved as ``config.json`` beside its checkpoints.

    ``classes``: the labels a conditional model is trained on (one-class MNIST: the normal
    digits); empty for all ``y_dim``. ``gan``: 'dcgan' (the original's losses, batch norm in D)
    or 'wgan_gp' (f-AnoGAN's WGAN-GP; layer norm in the critic D). ``patch_size`` > 0: trained
    on patches of that size (the output size) of images scaled by ``image_scale``.
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
    patch_size: int = 0
    image_scale: float = 1.0

    def __post_init__(self):
        check_fields([
            (self.patch_size and (self.output_height, self.output_width)
             != (self.patch_size, self.patch_size),
             "a patch model's output size is its patch size"),
            (not 0.0 < self.image_scale <= 1.0, "--image_scale must be in (0, 1]"),
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


    @property
    def value_range(self):
        """Pixel range of G's output: [0, 1] (sigmoid) when conditional, else [-1, 1]."""
        return (0.0, 1.0) if self.y_dim else (-1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters and output places of one training run (GAN and encoder).

    The GAN trains for ``epochs`` epochs but at least ``min_steps`` steps (0: the original's
    epochs alone). Adam's learning rate and betas left at None take ``gan``'s
    (``ADAM_DEFAULTS``). ``n_critic`` and ``gp_weight`` are WGAN-GP's: G is updated after every
    ``n_critic``-th critic update, and ``gp_weight`` weighs the gradient penalty.

    The encoder trains until its residual on held-out normal images stops falling: checked
    every ``encoder_check_every`` steps, it stops once ``encoder_patience`` checks in a row
    have not lowered it by 1 %, after at least ``encoder_min_steps`` and at most
    ``encoder_max_steps`` steps. With ``encoder_patience`` 0 its length is fixed instead:
    ``encoder_epochs`` epochs, but at least ``encoder_min_steps`` steps.
    """

    epochs: int = 25
    min_steps: int = 0
    gan: str = "dcgan"
    learning_rate: float | None = None
    beta1: float | None = None
    beta2: float | None = None
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
    encoder_max_steps: int = 10000
    encoder_patience: int = 3
    encoder_check_every: int = 250

    def __post_init__(self):
        check_fields([(self.gan not in GANS, f"--gan must be one of {GANS}")])
        for name, default in zip(("learning_rate", "beta1", "beta2"), ADAM_DEFAULTS[self.gan]):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        check_fields([
            (self.epochs < 1, "--epoch must be positive"),
            (self.min_steps < 0, "--min_steps must be >= 0"),
            (self.encoder_epochs < 1, "--encoder_epoch must be positive"),
            (self.encoder_min_steps < 0, "--encoder_min_steps must be >= 0"),
            (self.encoder_max_steps < max(1, self.encoder_min_steps),
             "--encoder_max_steps must be positive and at least --encoder_min_steps"),
            (self.encoder_patience < 0, "--encoder_patience must be >= 0"),
            (self.encoder_check_every < 1, "--encoder_check_every must be positive"),
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

    def epochs_for(self, steps_per_epoch):
        """The GAN's epochs: ``epochs``, or more to reach ``min_steps``."""
        return epochs_with_floor(self.epochs, self.min_steps, steps_per_epoch)

    def encoder_epochs_for(self, steps_per_epoch, rule=True):
        """The encoder's most epochs: enough to reach ``encoder_max_steps`` under the stopping
        rule (``rule`` and a patience); with a fixed length, ``encoder_epochs`` or more to
        reach ``encoder_min_steps``."""
        if rule and self.encoder_patience:
            return math.ceil(self.encoder_max_steps / steps_per_epoch)
        return epochs_with_floor(self.encoder_epochs, self.encoder_min_steps, steps_per_epoch)

    def encoder_plateau(self, measure):
        """The encoder's stopping rule on ``measure()`` (``training.Plateau``), or None for a
        fixed length."""
        from training import Plateau

        if not self.encoder_patience:
            return None
        return Plateau(measure, self.encoder_check_every, self.encoder_patience,
                       self.encoder_min_steps, self.encoder_max_steps)


def epochs_with_floor(epochs, min_steps, steps_per_epoch):
    """``epochs``, or the fewest whole epochs of ``steps_per_epoch`` steps that reach
    ``min_steps``, whichever is more."""
    return max(epochs, math.ceil(min_steps / steps_per_epoch))


SCORES = ("anogan", "izif")
DIS_LOSSES = ("feature", "gan")
Z_INITS = ("random", "encoder")
MAX_RESIDUAL_SHIFT = 8  # the smallest output size: G(z) mirrored at its edges
MAX_MAP_SIGMA = 64.0


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The AnoGAN latent search: Adam on z for ``steps`` steps, then the anomaly score.

    ``z_init`` 'random' starts at U(-1, 1) (the original), 'encoder' at E(x) (f-AnoGAN);
    ``steps`` 0 scores the starting z. ``restarts`` starting points per image keep the lowest
    final score (with the encoder, the first start is E(x)); ``clip_z`` keeps z in [-1, 1]
    after each step. ``score`` 'anogan' is the original's (``anomaly_score``, weight
    ``ano_lambda``), 'izif' f-AnoGAN's (``izif_score``, weight ``kappa``). ``residual_shift``
    pixels of misregistration the residual map forgives (``anomaly_map``: pixel metrics, map
    scores, figures); ``residual_map`` which map ('l1', the original's |x - G(z)|, 'ssim' or
    'gms'), smoothed by a Gaussian of ``map_sigma`` pixels (0: not smoothed). The defaults are
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
    residual_shift: int = 0
    residual_map: str = "l1"
    map_sigma: float = 0.0

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
            (not 0 <= self.residual_shift <= MAX_RESIDUAL_SHIFT,
             f"--residual_shift must be in [0, {MAX_RESIDUAL_SHIFT}] pixels"),
            (self.residual_map not in RESIDUAL_MAPS,
             f"--residual_map must be one of {RESIDUAL_MAPS}"),
            (not 0.0 <= self.map_sigma <= MAX_MAP_SIGMA,
             f"--map_sigma must be in [0, {MAX_MAP_SIGMA}] pixels"),
        ])

    def check_map_size(self, height, width):
        """ValueError unless maps of ``height`` x ``width`` can be smoothed by ``map_sigma``
        (its radius, 4 sigma, must be smaller than the map)."""
        radius = int(4.0 * self.map_sigma + 0.5) if self.map_sigma else 0
        check_fields([(radius >= min(height, width),
                       (f"--map_sigma {self.map_sigma:g} reaches {radius} pixels, more than "
                        f"the {height}x{width} maps have: lower it below "
                        f"{min(height, width) / 4:g}"))])

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

