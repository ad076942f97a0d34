"""Pictures of a model's G: the training sample grids (fixed inputs) and the encoder's
x | G(E(x)) grids, as PNGs and TensorBoard images, and the original's ``--visualize`` options
(random grids, z sweeps, GIFs)."""

import time
from pathlib import Path

import numpy as np
import tensorflow as tf

import utils


def sample_inputs(config, count, seed=0):
    """The fixed (z, labels) of the training sample grids; labels cycle through the model's
    conditions."""
    z = np.random.default_rng(seed).uniform(-1, 1, (count, config.z_dim)).astype(np.float32)
    if config.y_dim:
        conditions = np.array(config.conditions)
        return z, utils.one_hot(conditions[np.arange(count) % len(conditions)], config.y_dim)
    return z, np.zeros((count, 0), np.float32)


def write_grid(images, path, value_range, writer=None, tag="samples", step=0, shape=None):
    """Saves ``images`` (in ``value_range``) as a grid PNG and, with ``writer``, a TensorBoard
    image; returns ``path``."""
    utils.save_images(images, path, shape, value_range=value_range)
    if writer is not None:
        with writer.as_default(step=step):
            tf.summary.image(tag, utils.rescale(images, value_range), max_outputs=8)
    return path


def side_by_side(images, fakes, per_row=4):
    """x beside G(E(x)), ``per_row`` pairs a row: (pairs, grid shape)."""
    pairs = np.stack([images, fakes], axis=1).reshape(-1, *images.shape[1:])
    return pairs, (-(-len(images) // per_row), 2 * min(len(images), per_row))


def save_samples(model, inputs, epoch, index, writer=None):
    """Writes ``model``'s G on the fixed sample ``inputs`` as the original's train_XX_XXXX.png
    (and to TensorBoard)."""
    path = Path(model.train_config.sample_dir) / f"train_{epoch:02d}_{index:04d}.png"
    return write_grid(model.generate(*inputs), path, model.config.value_range, writer,
                      "samples", model.steps_done)


def save_reconstructions(model, images, labels, epoch, index, writer=None):
    """Writes x beside G(E(x)), four pairs a row, as encoder_XX_XXXX.png (and to TensorBoard)."""
    pairs, shape = side_by_side(
        images, model.generate(model.encode(images, labels).numpy(), labels))
    path = Path(model.train_config.sample_dir) / f"encoder_{epoch:02d}_{index:04d}.png"
    return write_grid(pairs, path, model.config.value_range, writer, "reconstructions",
                      model.encoder_steps_done, shape)


def visualize(model, option, sample_dir, batch_size, seed=0):
    """The original's visualisations of ``model``'s G (--visualize --option); the written paths."""
    rng = np.random.default_rng(seed)
    z_dim, sample_dir = model.config.z_dim, Path(sample_dir)
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime())
    values = np.arange(0, 1, 1.0 / batch_size)[:batch_size]

    def labels():
        if not model.config.y_dim:
            return None
        return utils.one_hot(rng.choice(model.config.conditions, batch_size),
                             model.config.y_dim)

    def sweep(dim, base):
        z = base.copy()
        z[:, dim] = values
        return model.generate(z, labels())

    value_range = model.config.value_range
    paths = []
    if option == 0:
        z = rng.uniform(-0.5, 0.5, (batch_size, z_dim))
        paths.append(sample_dir / f"test_{stamp}.png")
        utils.save_images(model.generate(z, labels()), paths[-1], value_range=value_range)
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
            shape = utils.grid_shape(z_dim)
            frames = [utils.merge(utils.rescale(np.stack([s[i] for s in sweeps]), value_range),
                                  shape) for i in range(batch_size)]
            paths.append(sample_dir / "test_gif_merged.gif")
            utils.save_gif(frames, paths[-1], duration=8, value_range=(0.0, 1.0))
    else:
        raise ValueError(f"unknown visualize option {option}")
    return paths
