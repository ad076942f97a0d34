"""The SavedModel of a trained detector: image files' pixels in, anomaly scores out.

``export_detector`` writes a SavedModel that needs TensorFlow alone. Its ``serving_default``
signature takes a batch of uint8 images ``[batch, height, width, channels]`` of any size with 1
to 4 channels, applies the training's pre-processing in the graph (alpha composited onto white,
Pillow's luma conversion or channel repetition, the original's centre crop, a bicubic resize rounded to 8 bits as Pillow's,
the model's value range), encodes each image with E and scores G(E(x)) exactly as
``--anomaly_test --z_init encoder --test_epoch 0`` does (a conditional model under each of its
normal digits, keeping G(z) under the one with the lowest search score). Its ``search``
signature runs the latent search from E(x) for a given number of steps. The threshold is a
variable; the model's config, health and threshold are JSON in the assets.
"""

import json
import os
import shutil
from pathlib import Path

import tensorflow as tf

import utils
from losses import critic_score
from networks import variables_by_path
from runtime import output_lock
from scoring import (
    add_tiles,
    detection_maps,
    gather_tiles,
    image_scores,
    stitched,
    tile_corners,
    tile_indices,
)

ASSET = "detector.json"


def luma(pixels):
    """Pillow's RGB -> L conversion (ITU-R 601-2, integer rounding) of int32 pixels."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) // 65536)[..., None]


def composited_on_white(pixels):
    """Pillow's ``alpha_composite`` onto opaque white of int32 pixels whose last channel is
    alpha (its integer arithmetic, 7 bits of precision): the opaque colour channels."""
    colour, alpha = pixels[..., :-1], pixels[..., -1:]
    mixed = (colour * alpha + 255 * (255 - alpha)) * 128 + (0x80 << 7)
    return (mixed // 256 + mixed) // 256 // 128


def opaque_channels(pixels):
    """int32 pixels of 1 to 4 channels as image files are read (``utils.eight_bit``): 2 and 4
    (gray or colour with alpha) composited onto white; 1 or 3 channels out."""
    channels = tf.shape(pixels)[-1]
    tf.debugging.assert_less_equal(
        channels, 4, message="images must have 1 (gray), 2 (gray, alpha), 3 (RGB) or 4 (RGBA) "
                             "channels")
    tf.debugging.assert_positive(channels, message="images must have at least one channel")
    return tf.cond(channels % 2 == 0, lambda: composited_on_white(pixels), lambda: pixels)


def where_rows(mask, new, old):
    """Row i of ``new`` where ``mask[i]``, else of ``old``."""
    return tf.where(tf.reshape(mask, [-1] + [1] * (len(new.shape) - 1)), new, old)


class Detector(tf.Module):
    """A trained DCGAN's G, D and E with the pre-processing, score and threshold of one mode."""

    def __init__(self, dcgan, spec, search_config, image_score, threshold, stride=0):
        super().__init__(name="detector")
        self.dcgan, self.spec, self.stride = dcgan, spec, stride
        self.search_config, self.image_score = search_config, image_score
        self.weights = [v.value for v in variables_by_path(
            dcgan.generator, dcgan.discriminator, dcgan.encoder).values()]
        self.threshold = tf.Variable(float(threshold), trainable=False, name="threshold")

    def preprocess(self, images):
        """uint8 images of any size and 1 to 4 channels -> the model's inputs."""
        cfg, spec = self.dcgan.config, self.spec
        pixels = opaque_channels(tf.cast(images, tf.int32))
        channels = tf.shape(pixels)[-1]
        if cfg.c_dim == 1:
            pixels = tf.cond(channels >= 3, lambda: luma(pixels), lambda: pixels[..., :1])
        else:
            pixels = tf.cond(channels >= 3, lambda: pixels[..., :3],
                             lambda: tf.tile(pixels[..., :1], [1, 1, 1, 3]))
        x = tf.cast(pixels, tf.float32)
        if spec.scale is not None:
            return utils.scale_pixels(self.scaled(x, spec.scale), spec.value_range)
        if spec.crop:
            height, width = tf.shape(x)[1], tf.shape(x)[2]
            crop_h, crop_w = spec.input_size
            top = tf.cast(tf.round(tf.cast(height - crop_h, tf.float32) / 2.0), tf.int32)
            left = tf.cast(tf.round(tf.cast(width - crop_w, tf.float32) / 2.0), tf.int32)
            x = x[:, top:top + crop_h, left:left + crop_w, :]
        out_h, out_w = spec.output_size
        resized = tf.image.resize(x, (out_h, out_w), method="bicubic", antialias=True)
        same = tf.logical_and(tf.shape(x)[1] == out_h, tf.shape(x)[2] == out_w)
        x = tf.cond(same, lambda: x, lambda: tf.clip_by_value(tf.round(resized), 0.0, 255.0))
        return utils.scale_pixels(tf.ensure_shape(x, [None, out_h, out_w, cfg.c_dim]),
                                  spec.value_range)

    @staticmethod
    def scaled(x, scale):
        """Patch mode: float pixels at ``scale`` of their size (bicubic, rounded to 8 bits as
        Pillow's), unchanged at scale 1."""
        if scale == 1.0:
            return x
        size = tf.maximum(1, tf.cast(tf.round(tf.cast(tf.shape(x)[1:3], tf.float32) * scale),
                                     tf.int32))
        resized = tf.image.resize(x, size, method="bicubic", antialias=True)
        return tf.clip_by_value(tf.round(resized), 0.0, 255.0)

    def _encoded(self, x, labels, steps):
        """Search score, critic score, G(z) and z after ``steps`` search steps from z = E(x)
        (None: at E(x), no loop), under one label batch."""
        dcgan = self.dcgan
        real_logits, real_features = dcgan.discriminator(x, labels, training=False)
        z = dcgan.encoder(x, labels, training=False)
        if steps is not None:
            z, _, _ = dcgan.adam_steps(x, labels, z, real_features, self.search_config, steps)
        search_score, _, _, fakes = dcgan.fake_scores(x, labels, z, real_features,
                                                      self.search_config)
        return search_score, critic_score(real_logits), fakes, z

    def _best_condition(self, x, steps):
        """As the anomaly test: per image, G(z) and z under the label with the lowest search
        score, that score, and the lowest critic score over the labels."""
        best = None
        for labels in self.dcgan.condition_labels(tf.shape(x)[0]):
            outputs = self._encoded(x, labels, steps)
            if best is None:
                best = outputs
                continue
            (score, critic, fakes, z), (best_score, best_critic, best_fakes, best_z) = outputs, best
            better = score < best_score
            best = (tf.minimum(score, best_score), tf.minimum(critic, best_critic),
                    where_rows(better, fakes, best_fakes), where_rows(better, z, best_z))
        return best

    def _detect(self, images, steps):
        """Per image: score, is_anomaly, residual_map, reconstruction (in [0, 1]) and z."""
        x = self.preprocess(images)
        if self.spec.scale is not None:
            score, maps, fakes, z = self._tiled(x, steps)
        else:
            search_score, critic, fakes, z = self._best_condition(x, steps)
            maps = detection_maps(x, fakes, self.dcgan.config.value_range, self.search_config)
            score, maps = image_scores(self.image_score, search_score, maps, lambda: critic,
                                       self.search_config.map_sigma)
        return {"score": score, "is_anomaly": score > self.threshold, "residual_map": maps,
                "reconstruction": utils.rescale(fakes, self.dcgan.config.value_range), "z": z}

    def _tiled(self, x, steps):
        """Patch mode: every tile of every image (``scoring``'s tiling at the stride), scored
        at once; per image the score, the stitched and smoothed map, the stitched G(z) and the
        tiles' mean z."""
        batch, height, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
        patch = self.dcgan.config.output_height
        tf.debugging.assert_greater_equal(
            tf.minimum(height, width), patch,
            message=f"images must be at least the {patch}x{patch} patch")
        corners = tile_corners(height, width, patch, self.stride)
        count = tf.shape(corners)[0]
        indices = tile_indices(tf.repeat(tf.range(batch), count), tf.tile(corners, [batch, 1]),
                               patch)
        tiles = tf.ensure_shape(gather_tiles(x, indices), [None, patch, patch, x.shape[-1]])
        _, critic, fakes, z = self._best_condition(tiles, steps)
        maps = detection_maps(tiles, fakes, self.dcgan.config.value_range, self.search_config)
        coverage = add_tiles(tf.zeros(tf.shape(x)[:3]), indices, tf.ones_like(maps))
        stitched_map = stitched(add_tiles(tf.zeros(tf.shape(x)[:3]), indices, maps), coverage)
        stitched_fakes = stitched(add_tiles(tf.zeros_like(x), indices, fakes), coverage)
        per_image = tf.stack([batch, count])
        score, maps = image_scores(
            self.image_score, None, stitched_map,
            lambda: tf.reduce_max(tf.reshape(critic, per_image), axis=1),
            self.search_config.map_sigma)
        z = tf.reduce_mean(tf.reshape(z, tf.concat([per_image, [-1]], 0)), axis=1)
        return score, maps, stitched_fakes, z

    def score(self, images):
        """The one-pass score at z = E(x) (``serving_default``)."""
        return self._detect(images, None)

    def search(self, images, steps):
        """The latent search from E(x) for ``steps`` Adam steps (``search``)."""
        return self._detect(images, steps)


class ExportError(Exception):
    """An export path that must not be replaced, or a SavedModel that could not be written."""


def is_export(folder):
    """Whether ``folder`` holds an earlier export of this project: a SavedModel whose assets
    hold this project's ``detector.json`` (its marker)."""
    folder = Path(folder)
    try:
        info = json.loads((folder / "assets" / ASSET).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(info, dict) and {"model", "threshold", "mode"} <= info.keys()
            and (folder / "saved_model.pb").is_file())


def check_target(folder):
    """ExportError unless ``folder`` is a new path or an earlier export (``is_export``) that
    may be replaced: never a data, checkpoint or user's folder, a file or a link."""
    path = Path(os.path.abspath(folder))
    if path.is_symlink():
        raise ExportError(f"{path} is a symbolic link: export to the folder it points to, or "
                          "to a new path; nothing was touched")
    if path.exists() and not is_export(path):
        kind = "a folder" if path.is_dir() else "a file"
        raise ExportError(f"{path} is {kind} that is not an earlier export of this project "
                          f"(no assets/{ASSET}): export to a new path; nothing was touched")


def remove_stale_temporaries(folder):
    """Removes the hidden temporary folders that a killed export of ``folder`` left beside
    it (the caller holds its ``output_lock``)."""
    for pattern in (f".{folder.name}.*.tmp", f".{folder.name}.*.old"):
        for stale in folder.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def export_detector(dcgan, spec, search_config, image_score, threshold, info, folder,
                    stride=0):
    """Writes the detector's SavedModel into ``folder`` (whole: into a temporary folder that
    is then renamed), a new path or an earlier export (``check_target``: ExportError else).
    ``info`` goes into the assets as JSON."""
    folder = Path(os.path.abspath(folder))
    detector = Detector(dcgan, spec, search_config, image_score, threshold, stride)
    images = tf.TensorSpec([None, None, None, None], tf.uint8, name="images")
    serve = tf.function(detector.score, input_signature=[images])
    search = tf.function(detector.search, input_signature=[
        images, tf.TensorSpec([], tf.int32, name="steps")])
    with output_lock(folder, "export"):
        check_target(folder)
        remove_stale_temporaries(folder)
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
        try:
            tf.saved_model.save(detector, str(tmp), signatures={
                "serving_default": serve.get_concrete_function(),
                "search": search.get_concrete_function()},
                options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
            (tmp / "assets").mkdir(exist_ok=True)
            utils.write_json(tmp / "assets" / ASSET, info)
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
        except tf.errors.OpError as error:
            raise ExportError(f"the SavedModel could not be written into {tmp.parent} "
                              f"({error.message.splitlines()[0]})") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not folder.exists():
                os.replace(old, folder)
        shutil.rmtree(old, ignore_errors=True)
    return folder
