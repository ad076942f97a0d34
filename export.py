"""The SavedModel of a trained detector: image files' pixels in, anomaly scores out.

``export_detector`` writes a SavedModel that needs TensorFlow alone. Its ``serving_default``
signature takes a batch of uint8 images ``[batch, height, width, channels]`` of any size with 1
or 3 channels, applies the training's pre-processing in the graph (Pillow's luma conversion or
channel repetition, the original's centre crop, a bicubic resize rounded to 8 bits as Pillow's,
the model's value range), encodes each image with E and scores G(E(x)) exactly as
``--anomaly_test --z_init encoder --test_epoch 0`` does (a conditional model under each of its
normal digits, keeping G(z) under the one with the lowest search score). Its ``search``
signature runs the latent search from E(x) for a given number of steps. The threshold is a
variable; the model's config, health and threshold are JSON in the assets.
"""

import os
import shutil
from pathlib import Path

import tensorflow as tf

import utils
from losses import anomaly_map, critic_score, image_score
from networks import variables_by_path

ASSET = "detector.json"


def luma(pixels):
    """Pillow's RGB -> L conversion (ITU-R 601-2, integer rounding) of int32 pixels."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) // 65536)[..., None]


def where_rows(mask, new, old):
    """Row i of ``new`` where ``mask[i]``, else of ``old``."""
    return tf.where(tf.reshape(mask, [-1] + [1] * (len(new.shape) - 1)), new, old)


class Detector(tf.Module):
    """A trained DCGAN's G, D and E with the pre-processing, score and threshold of one mode."""

    def __init__(self, dcgan, spec, search_config, image_score, threshold):
        super().__init__(name="detector")
        self.dcgan, self.spec = dcgan, spec
        self.search_config, self.image_score = search_config, image_score
        self.weights = [v.value for v in variables_by_path(
            dcgan.generator, dcgan.discriminator, dcgan.encoder).values()]
        self.threshold = tf.Variable(float(threshold), trainable=False, name="threshold")

    def preprocess(self, images):
        """uint8 images of any size and 1 or 3 channels -> the model's inputs."""
        cfg, spec = self.dcgan.config, self.spec
        pixels = tf.cast(images, tf.int32)
        channels = tf.shape(pixels)[-1]
        if cfg.c_dim == 1:
            pixels = tf.cond(channels >= 3, lambda: luma(pixels), lambda: pixels[..., :1])
        else:
            pixels = tf.cond(channels >= 3, lambda: pixels[..., :3],
                             lambda: tf.tile(pixels[..., :1], [1, 1, 1, 3]))
        x = tf.cast(pixels, tf.float32)
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
        search_score, critic, fakes, z = self._best_condition(x, steps)
        maps = anomaly_map(x, fakes, self.dcgan.config.value_range,
                           self.search_config.residual_shift)
        score = image_score(self.image_score, search_score, maps, lambda: critic)
        return {"score": score, "is_anomaly": score > self.threshold, "residual_map": maps,
                "reconstruction": utils.rescale(fakes, self.dcgan.config.value_range), "z": z}

    def score(self, images):
        """The one-pass score at z = E(x) (``serving_default``)."""
        return self._detect(images, None)

    def search(self, images, steps):
        """The latent search from E(x) for ``steps`` Adam steps (``search``)."""
        return self._detect(images, steps)


def export_detector(dcgan, spec, search_config, image_score, threshold, info, folder):
    """Writes the detector's SavedModel into ``folder`` (whole: into a temporary folder that
    is then renamed; an existing one is replaced). ``info`` goes into the assets as JSON."""
    folder = Path(folder)
    detector = Detector(dcgan, spec, search_config, image_score, threshold)
    images = tf.TensorSpec([None, None, None, None], tf.uint8, name="images")
    serve = tf.function(detector.score, input_signature=[images])
    search = tf.function(detector.search, input_signature=[
        images, tf.TensorSpec([], tf.int32, name="steps")])
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder
