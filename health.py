"""Training health: label-free checks that G learnt the normal images and that E inverts G.

A GAN can end its training normally and still be useless: G collapsed onto a few images, or
still draws noise. Anomaly scores of such a G rank at or below chance. These checks use the
training images alone, in pixels scaled to [0, 1], and RMS distances per pixel:

- ``diversity``: the mean distance between two of G's samples over the mean distance between
  two real images; a collapsed G draws alike images (well below 1).
- ``fidelity``: how far each of G's samples is from its nearest real image, over how far a
  real image is from its nearest other real image; a G that draws noise or blobs is far from
  every real image (well above 1).
- ``encoder_vs_mean``: the mean |x - G(E(x))| of held-out normal images over the mean
  |x - mean training image|; an encoder that does not invert G does no better than the mean.
- ``encoder_vs_search``: that residual over the residual after a short latent search from a
  random z; an unconverged encoder is beaten by a few search steps.

When G(E(x)) is little better than the mean image and the short search is not either, G (not
E) is what fails on held-out images, and the warning says to train the GAN instead.

The limits are measured (see benchmarks/README.md): a check fails when a value is past its
limit, and the warning says what to do. ``check_gan`` and ``check_encoder`` run the checks on a
``DCGAN``; ``log_health`` writes a result to TensorBoard.
"""

import dataclasses

import numpy as np
import tensorflow as tf

import utils
from config import SearchConfig
from samples import sample_inputs
from search import starting_z

ADVICE = "try another --seed or train longer (--epoch, --min_steps)"
ENCODER_ADVICE = "train the encoder longer (--encoder_min_steps, --encoder_max_steps)"
PLATEAU_ADVICE = ("E had stopped improving (its held-out residual stopped falling by step {}), "
                  "so G is the limit, not E: train the GAN longer (--min_steps, --epoch)")
GENERATOR_ADVICE = ("G itself regenerates held-out images little better: a short search "
                    "reaches {:.2f} of the mean image's residual; train the GAN longer (--epoch, "
                    "--min_steps) or on more images, a longer encoder training will not help")


@dataclasses.dataclass(frozen=True)
class HealthLimits:
    """Where each measure turns from healthy to failed, set between what healthy and failed
    runs measured (benchmarks/README.md): healthy one-class MNIST GANs gave diversity 0.82-1.01,
    fidelity 0.96-1.11, encoder_vs_mean 0.27-0.55 and encoder_vs_search 0.99-1.18 (DCGAN) and
    1.34-1.52 (WGAN-GP, whose G a short search inverts more closely); collapsed
    ones (unconditional, digits 2 and 3) diversity 0.53-0.62 and encoder_vs_mean 0.95; an
    encoder trained 9 steps encoder_vs_mean 1.09 and encoder_vs_search 2.48; untrained tiny Gs
    fidelity 6.8-8.2."""

    min_diversity: float = 0.7
    max_fidelity: float = 1.5
    max_encoder_vs_mean: float = 0.8
    max_encoder_vs_search: float = 2.0


LIMITS = HealthLimits()

CHECKS = (
    # (measure, limit field, failed when value is ..., what a failure means)
    ("diversity", "min_diversity", "below", "G's samples are alike: mode collapse"),
    ("fidelity", "max_fidelity", "above", "G's samples are far from every training image"),
    ("encoder_vs_mean", "max_encoder_vs_mean", "above",
     "G(E(x)) regenerates held-out images little better than the mean training image"),
    ("encoder_vs_search", "max_encoder_vs_search", "above",
     "a short latent search regenerates held-out images better than E"),
)


def pairwise_rms(a, b):
    """RMS per-pixel distances (len(a), len(b)) between two sets of flattened images."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    squared = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0) / a.shape[1])


def mean_pairwise(images):
    """The mean distance between two different images of a set."""
    distances = pairwise_rms(images, images)
    count = len(images)
    return float(distances.sum() / max(count * (count - 1), 1))


def diversity(fakes, reals):
    """Spread of G's samples over the spread of real images (about 1 when G is healthy)."""
    return mean_pairwise(fakes) / max(mean_pairwise(reals), 1e-12)


def fidelity(fakes, queries, references):
    """Nearest-real distance of G's samples over that of real ``queries`` (not in
    ``references``); about 1 when G draws images like the real ones."""
    fake_nearest = pairwise_rms(fakes, references).min(axis=1).mean()
    real_nearest = pairwise_rms(queries, references).min(axis=1).mean()
    return float(fake_nearest / max(real_nearest, 1e-12))


def mean_abs(a, b):
    """The mean absolute difference per pixel of two image sets (or a set and one image)."""
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def gan_measures(fakes, queries, references):
    """The GAN's measures from G's samples and real images, all in [0, 1]."""
    return {"diversity": round(diversity(fakes, queries), 4),
            "fidelity": round(fidelity(fakes, queries, references), 4)}


def encoder_measures(held_out, reconstructions, searched, references):
    """The encoder's measures from held-out images, G(E(x)), G(z) after a short search, and
    the training images (for the mean-image baseline)."""
    residual = mean_abs(held_out, reconstructions)
    mean_image = mean_abs(held_out, references.mean(axis=0))
    search = mean_abs(held_out, searched)
    return {"encoder_residual": round(residual, 5),
            "mean_image_residual": round(mean_image, 5),
            "search_residual": round(search, 5),
            "encoder_vs_mean": round(residual / max(mean_image, 1e-12), 4),
            "encoder_vs_search": round(residual / max(search, 1e-12), 4)}


def verdict(measures, limits=LIMITS):
    """``measures`` with 'passed' and 'failures' (one phrase per failed check)."""
    failures = []
    for name, field, direction, meaning in CHECKS:
        if name not in measures:
            continue
        value, limit = measures[name], getattr(limits, field)
        failed = value < limit if direction == "below" else value > limit
        if failed:
            sign = "<" if direction == "below" else ">"
            failures.append(f"{name} {value:.3g} {sign} {limit:g} ({meaning})")
    return {**measures, "passed": not failures, "failures": failures}


def summary_line(result):
    """The measures of a verdict as 'name value (limit)' pairs, for the per-epoch line."""
    parts = []
    for name, field, direction, _ in CHECKS:
        if name in result:
            sign = ">=" if direction == "below" else "<="
            parts.append(f"{name} {result[name]:.3f} ({sign} {getattr(LIMITS, field):g})")
    return ", ".join(parts)


def search_vs_mean(result):
    """The short search's residual over the mean image's (None without both)."""
    if "search_residual" not in result or "mean_image_residual" not in result:
        return None
    return result["search_residual"] / max(result["mean_image_residual"], 1e-12)


def encoder_advice(result, gan="dcgan", limits=LIMITS):
    """What to do about a failed encoder check: train E longer, unless G is the limit: E's
    stopping rule saw its held-out residual stop falling, or a short search does no better."""
    if result.get("stopped_by") == "plateau":
        return PLATEAU_ADVICE.format(result["stopped_at"]) + (
            ", or --gan wgan_gp" if gan == "dcgan" else "")
    ratio = search_vs_mean(result)
    if ratio is not None and ratio > limits.max_encoder_vs_mean:
        return GENERATOR_ADVICE.format(ratio)
    return ENCODER_ADVICE


def warning_line(result, what="training", gan="dcgan"):
    """The one warning line of a failed verdict, or None when it passed."""
    if result is None or result["passed"]:
        return None
    advice = (encoder_advice(result, gan) if what == "encoder"
              else ADVICE + (", or --gan wgan_gp" if gan == "dcgan" else ""))
    return (f"warning: {what} health check failed: " + "; ".join(result["failures"])
            + f": {advice}")


@dataclasses.dataclass
class RealImages:
    """Real images for the checks, in the model's value range (``value_range``).

    ``queries`` and ``references`` are disjoint sets of training images; ``held_out`` (with
    their one-hot ``held_out_labels``) were never trained on.
    """

    queries: np.ndarray
    references: np.ndarray
    held_out: np.ndarray
    held_out_labels: np.ndarray
    value_range: tuple

    def unit(self, images):
        """``images`` of the model's value range in [0, 1]."""
        return utils.rescale(np.asarray(images, np.float32), self.value_range)


SEED = 12345
"""Seed of the checks' G samples and search starts (fixed: values compare across epochs and
runs)."""

SHORT_SEARCH = SearchConfig(steps=50, learning_rate=0.03, clip_z=True, score="izif")
"""The short latent search E is compared with: izi_f's loss, 50 steps of 0.03 within G's prior."""


def check_gan(model, reals):
    """G's verdict (``gan_measures``): ``model``'s samples against the real images ``reals``."""
    fakes = model.generate(*sample_inputs(model.config, len(reals.queries), SEED))
    return verdict(gan_measures(reals.unit(fakes), reals.unit(reals.queries),
                                reals.unit(reals.references)))


def check_encoder(model, reals):
    """E's verdict (``encoder_measures``) on the held-out images of ``reals``: G(E(x)) against
    the mean training image and against a short search from random z."""
    images, labels = reals.held_out, reals.held_out_labels
    reconstructions = model.generate(model.encode(images, labels).numpy(), labels)
    z0 = starting_z(range(len(images)), model.config.z_dim, SEED)
    searched = model.search(images, labels, z0, SHORT_SEARCH).final
    return verdict(encoder_measures(reals.unit(images), reals.unit(reconstructions),
                                    reals.unit(searched), reals.unit(reals.references)))


def stop_line(stop, patience):
    """The line saying where and why the encoder's training stopped (``DCGAN.encoder_stop``)."""
    best = min(value for _, value in stop["checks"]) if stop["checks"] else None
    if stop["reason"] == "plateau":
        return (f"encoder stopped at step {stop['step']}: its held-out residual (best "
                f"{best:.5f}) fell by less than 1% in {patience} checks in a row")
    return (f"encoder stopped at step {stop['step']}, --encoder_max_steps, its held-out "
            f"residual still falling (best {best:.5f})" if best is not None else
            f"encoder stopped at step {stop['step']}, --encoder_max_steps")


def held_out_residual(model, reals):
    """The mean |x - G(E(x))| in [0, 1] of the held-out images of ``reals``: what the
    encoder's stopping rule watches."""
    images, labels = reals.held_out, reals.held_out_labels
    reconstructions = model.generate(model.encode(images, labels).numpy(), labels)
    return mean_abs(reals.unit(images), reals.unit(reconstructions))


def log_health(writer, part, result, step):
    """Writes a verdict's values (and whether it passed) to TensorBoard as health/*."""
    with writer.as_default(step=step):
        for name, value in result.items():
            if isinstance(value, float):
                tf.summary.scalar(f"health/{name}", value)
        tf.summary.scalar(f"health/{part}_passed", float(result["passed"]))
