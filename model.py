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

This module owns ``DCGAN``: G, D and the encoder E with their optimisers; the training steps
(DCGAN: one D update, then two G updates; or WGAN-GP), encoder training with G and D fixed, the
health check's samples, the batched latent-z search (``DCGAN.search``) and scoring
(``DCGAN.score_batches``, ``DCGAN.critic_scores``), and its checkpoints. The configurations are
in config.py, the losses and scores in losses.py, the networks in networks.py, the training loop
in training.py.
"""

import contextlib
import dataclasses
import functools
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

import health
import samples
import training
import utils
from checkpoints import CheckpointFolder, read_model_config
from config import TrainConfig
from losses import (
    adam_update,
    critic_loss,
    critic_score,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    izif_score,
    wasserstein_generator_loss,
)
from networks import make_networks, variables_by_path
from ops import prepared_transposes
from runtime import ReentrantFolderLock, is_chief, on_replicas
from search import SearchResult, batch_starts


def with_noise(dataset, z_dim, seed):
    """Adds a U(-1, 1) z batch to every (images, labels) batch, reproducible from ``seed``."""
    def add_z(index, batch):
        images, labels = batch
        z = tf.random.stateless_uniform((tf.shape(images)[0], z_dim), seed=[seed, index],
                                        minval=-1.0, maxval=1.0)
        return images, labels, z

    return dataset.enumerate().map(add_z)


def apply_gradients(optimizer, tape, loss, network):
    """One ``optimizer`` update of ``network``'s trainable variables on ``loss``."""
    variables = network.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))


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
        with self.strategy.scope():
            self.generator, self.discriminator, self.encoder = make_networks(config)
            self.d_optim, self.g_optim, self.e_optim = (
                keras.optimizers.Adam(rate, beta_1=beta1, beta_2=beta2)
                for rate, beta1, beta2 in self._adam_settings())
            for optimizer, network in ((self.d_optim, self.discriminator),
                                       (self.g_optim, self.generator),
                                       (self.e_optim, self.encoder)):
                optimizer.build(network.trainable_variables)  # restores fill every slot
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.encoder_step = tf.Variable(0, dtype=tf.int64, trainable=False,
                                            name="encoder_step")
            self.encoder_gan_step = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                                name="encoder_gan_step")
        self.warnings = []
        self.checkpoints = CheckpointFolder(tf.train.Checkpoint(
            models=variables_by_path(self.generator, self.discriminator),
            d_optim=self.d_optim, g_optim=self.g_optim, step=self.step),
            self.checkpoint_dir, self.warnings)
        self.encoder_checkpoints = CheckpointFolder(tf.train.Checkpoint(
            models=variables_by_path(self.encoder), optim=self.e_optim,
            step=self.encoder_step, gan_step=self.encoder_gan_step),
            self.checkpoint_dir / "encoder", self.warnings)
        self.health = {"gan": None, "encoder": None}
        self.training_seed = None
        self.encoder_stop = None
        self._searches = {}
        self._lock = ReentrantFolderLock(self.checkpoint_dir)

    def _adam_settings(self):
        """(learning rate, beta1, beta2) of D's, G's and E's Adam, in that order."""
        cfg = self.train_config
        return ((cfg.learning_rate, cfg.beta1, cfg.beta2),) * 2 + (
            (cfg.encoder_learning_rate, 0.5, 0.999),)

    # Checkpoints -----------------------------------------------------------------------------

    @property
    def config_path(self):
        return self.checkpoint_dir / "config.json"

    def load(self):
        """Restores the latest checkpoint (and the encoder's, if any); False when there is none.

        A damaged newest checkpoint (or a lost 'checkpoint' index file) falls back to the
        newest intact one, with a line in ``warnings``. Raises ``CheckpointError`` when none
        can be restored or the checkpoint was built with other shapes. The optimisers keep
        their state but take this configuration's learning rates.
        """
        if not self.checkpoints.holds_checkpoints():
            return False
        saved = read_model_config(self.config_path, self.config)
        self.health = {**self.health, **saved.get("health", {})}
        self.training_seed = saved.get("training_seed")
        self.checkpoints.restore_newest()
        self.encoder_checkpoints.restore_newest()
        encoder = saved.get("encoder") if isinstance(saved.get("encoder"), dict) else {}
        stop = encoder.get("stop")
        if (isinstance(stop, dict) and stop.get("step") == self.encoder_steps_done
                and encoder.get("trained_for_step") == self.encoder_trained_for):
            self.encoder_stop = stop
        for optimizer, (rate, _, _) in zip((self.d_optim, self.g_optim, self.e_optim),
                                           self._adam_settings()):
            optimizer.learning_rate.assign(rate)  # the configuration's, not the checkpoint's
        return True

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

    def exclusive(self):
        """Within: this process is the only one training into ``checkpoint_dir`` (re-entrant).

        Raises ``CheckpointError`` at once when another process trains there. Scoring needs no
        lock: checkpoints are written whole and then named.
        """
        return self._lock.held() if self.is_chief else contextlib.nullcontext()

    def save(self):
        """Writes a GAN checkpoint at the current step, and the model's config.json."""
        return self._save(self.checkpoints, self.steps_done)

    def save_encoder(self):
        """Writes an encoder checkpoint at its current step, and the model's config.json."""
        return self._save(self.encoder_checkpoints, self.encoder_steps_done)

    def _save(self, folder, number):
        """Saves into ``folder`` (collective: every worker calls this) and writes config.json."""
        with self.exclusive():
            path = folder.save(number, self.is_chief)
            if self.is_chief:
                self.write_config()
        return path

    def set_aside(self, name):
        """Moves this training's checkpoints and config.json into the sub-folder ``name`` (a
        failed training kept for inspection); the folder then holds no checkpoint. Returns it."""
        with self.exclusive():
            return self.checkpoints.move_into(self.checkpoint_dir / name)

    def write_config(self):
        """Writes config.json: the model's shapes, the seed it was trained with, its encoder
        and the training health."""
        encoder = None if self.encoder_trained_for is None else {
            "steps": self.encoder_steps_done, "trained_for_step": self.encoder_trained_for,
            "kappa": self.train_config.encoder_kappa, "stop": self.encoder_stop}
        utils.write_json(self.config_path, {
            **dataclasses.asdict(self.config), "training_seed": self.training_seed,
            "encoder": encoder, "health": self.health})

    # Training --------------------------------------------------------------------------------

    def _critic(self, images, labels):
        """D's logits in training mode."""
        return self.discriminator(images, labels, training=True)[0]

    def _fakes(self, labels, z):
        """G(z) in training mode."""
        return self.generator(z, labels, training=True)

    def _discriminator_update(self, images, labels, z, average):
        """One D update on the original's loss (per replica)."""
        with tf.GradientTape() as tape:
            real_logits = self._critic(images, labels)
            d_loss = average(discriminator_loss(real_logits,
                                                self._critic(self._fakes(labels, z), labels)))
        apply_gradients(self.d_optim, tape, d_loss, self.discriminator)
        return {"d_loss": d_loss}

    def _generator_update(self, loss, images, labels, z, average):
        """One G update on ``loss`` of D's logits for G(z) (per replica)."""
        with tf.GradientTape() as tape:
            g_loss = average(loss(self._critic(self._fakes(labels, z), labels)))
        apply_gradients(self.g_optim, tape, g_loss, self.generator)
        return {"g_loss": g_loss}

    def _critic_update(self, images, labels, z, average):
        """One critic update with the gradient penalty (per replica); g_loss is G's loss
        before G's next update."""
        critic = functools.partial(self._critic, labels=labels)
        alpha = tf.random.uniform((tf.shape(images)[0], 1, 1, 1))
        with tf.GradientTape() as tape:
            fakes = self._fakes(labels, z)
            real_logits, fake_logits = critic(images), critic(fakes)
            penalty = gradient_penalty(critic, images, fakes, alpha)
            d_loss = average(critic_loss(real_logits, fake_logits)
                             + self.train_config.gp_weight * penalty)
        apply_gradients(self.d_optim, tape, d_loss, self.discriminator)
        return {"d_loss": d_loss, "g_loss": average(wasserstein_generator_loss(fake_logits)),
                "gradient_penalty": average(penalty)}

    def _encoder_update(self, images, labels, average):
        """One update of E on the izi_f loss (per replica); G and D are fixed and in
        inference mode."""
        kappa = self.train_config.encoder_kappa
        with prepared_transposes(self.generator, self.discriminator):
            _, real_features = self.discriminator(images, labels, training=False)
            with tf.GradientTape() as tape:
                fakes = self.generator(self.encoder(images, labels, training=True), labels,
                                       training=False)
                _, fake_features = self.discriminator(fakes, labels, training=False)
                score, residual, features = izif_score(images, fakes, real_features,
                                                       fake_features, kappa)
                loss = average(score)
        apply_gradients(self.e_optim, tape, loss, self.encoder)
        return {"encoder_loss": loss, "encoder_residual": average(residual),
                "encoder_features": average(features)}

    def _dcgan_step(self, run):
        """One D update, then two G updates on the same z (the original's schedule)."""
        losses = run(self._discriminator_update)
        g_loss = tf.zeros_like(losses["d_loss"])
        for _ in tf.range(2):  # one G update in the graph, run twice
            g_loss = run(functools.partial(self._generator_update, generator_loss))["g_loss"]
        return {**losses, "g_loss": g_loss}

    def _wgan_gp_step(self, run):
        """One critic update; after every ``n_critic``-th, one G update (f-AnoGAN's WGAN-GP
        schedule). g_loss is G's loss before its update."""
        losses = run(self._critic_update)
        g_loss = losses["g_loss"]
        if (self.step + 1) % self.train_config.n_critic == 0:
            g_loss = run(functools.partial(self._generator_update,
                                           wasserstein_generator_loss))["g_loss"]
        return {**losses, "g_loss": g_loss}

    def _encoder_step(self, run):
        """One update of E."""
        return run(self._encoder_update)

    def _distributed(self, step_fn, counter, global_batch):
        """A compiled step: ``step_fn(run)`` composes updates, each ``run(update)`` running
        ``update(*batch, average)`` on every replica (its losses averaged over the global
        batch) and summing its losses; the step advances ``counter``. Control flow stays
        outside the replicas, where the strategies allow it."""
        average = functools.partial(tf.nn.compute_average_loss, global_batch_size=global_batch)

        @tf.function
        def step(*batch):
            def run(update):
                losses = self.strategy.run(lambda *replica: update(*replica, average),
                                           args=batch)
                return {name: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                        for name, value in losses.items()}
            losses = step_fn(run)
            counter.assign_add(1)
            return losses
        return step

    def train_step_fn(self, batch_size):
        """The compiled training step on a global batch of (images, labels, z): {loss: value}."""
        step_fn = self._wgan_gp_step if self.config.gan == "wgan_gp" else self._dcgan_step
        return self._distributed(step_fn, self.step, batch_size)

    def train(self, dataset, steps_per_epoch, batch_size, sample_inputs, seed=0, reals=None):
        """Trains G and D until ``epochs_for(steps_per_epoch)`` epochs of ``steps_per_epoch``
        batches are done.

        ``dataset`` yields (images, labels) batches of ``batch_size`` and is iterated once per
        epoch; ``sample_inputs`` is the fixed (z, labels) of the sample grids. Resumes from
        ``self.step``. With ``reals`` (``health.RealImages``) G's health is checked at every
        epoch's end (``self.health['gan']``). Returns the (d_loss, g_loss) of each step of this
        run.
        """
        self.training_seed = seed

        def epoch_end(writer):
            if reals is None:
                return ""
            return ", " + health.summary_line(self.check_health(reals, "gan", writer))

        phase = training.Phase(
            label="", step_fn=self.train_step_fn(batch_size), counter=self.step,
            epoch_batches=lambda epoch: with_noise(dataset, self.config.z_dim, seed + epoch),
            save=self.save, latest=lambda: self.checkpoints.latest,
            samples=lambda epoch, index, writer: samples.save_samples(
                self, sample_inputs, epoch, index, writer),
            epoch_end=epoch_end)
        with self.exclusive():
            return training.run(phase, steps_per_epoch,
                                self.train_config.epochs_for(steps_per_epoch), self.strategy,
                                self.train_config)

    def train_encoder(self, dataset, steps_per_epoch, batch_size, sample_images, reals=None):
        """Trains E with G and D fixed (izi_f loss) until its residual on the held-out images
        of ``reals`` stops falling (``TrainConfig.encoder_plateau``; ``encoder_stop`` then says
        at which step and why), or for a fixed length without the rule or without ``reals``.

        Starts over (from E's current weights) when E was trained for another G. Grids of
        ``sample_images`` beside G(E(x)) go to the sample folder. With ``reals``, E's health is
        checked at the end (``self.health['encoder']``). Returns the losses of each step of
        this run.
        """
        if self.encoder_trained_for not in (None, self.steps_done):
            self.encoder_step.assign(0)
            self.encoder_stop = None
        self.encoder_gan_step.assign(self.steps_done)
        plateau = None if reals is None else self.train_config.encoder_plateau(
            functools.partial(health.held_out_residual, self, reals))
        phase = training.Phase(
            label="encoder ", counter=self.encoder_step,
            step_fn=self._distributed(self._encoder_step, self.encoder_step, batch_size),
            epoch_batches=lambda epoch: dataset, save=self.save_encoder,
            latest=lambda: self.encoder_checkpoints.latest,
            samples=lambda epoch, index, writer: samples.save_reconstructions(
                self, *sample_images, epoch, index, writer), plateau=plateau)
        epochs = self.train_config.encoder_epochs_for(steps_per_epoch, plateau is not None)
        with self.exclusive():
            history = training.run(phase, steps_per_epoch, epochs, self.strategy,
                                   self.train_config)
            if plateau is not None:
                self.encoder_stop = {"reason": plateau.reason or "ceiling",
                                     "step": self.encoder_steps_done,
                                     "checks": plateau.history}
            if reals is not None and self.is_chief:
                result = self.check_health(reals, "encoder")
                if self.encoder_stop is not None:
                    result.update(stopped_by=self.encoder_stop["reason"],
                                  stopped_at=self.encoder_stop["step"])
                self.write_config()
        return history

    # Health ----------------------------------------------------------------------------------

    def check_health(self, reals, part, writer=None):
        """Runs one health check ('gan': ``health.check_gan``, or 'encoder') on ``reals``, keeps
        its verdict (saved in config.json) and logs it to TensorBoard; returns the verdict."""
        check = health.check_gan if part == "gan" else health.check_encoder
        result = self.health[part] = check(self, reals)
        step = self.steps_done if part == "gan" else self.encoder_steps_done
        if writer is not None:
            health.log_health(writer, part, result, step)
            return result
        with contextlib.closing(tf.summary.create_file_writer(self.train_config.log_dir)) as own:
            health.log_health(own, part, result, step)
        return result

    # Anomaly detection -----------------------------------------------------------------------

    def fake_scores(self, images, labels, z, real_features, config):
        """Per-image (score, residual, discrimination) of G(z) against ``images``, and G(z)."""
        fakes = self.generator(z, labels, training=False)
        logits, features = self.discriminator(fakes, labels, training=False)
        return (*config.scores(images, fakes, real_features, features, logits), fakes)

    def adam_steps(self, images, labels, z, real_features, config, steps=None):
        """``steps`` (default ``config.steps``, > 0) Adam steps on z; the final z and G(z) at
        the first and middle snapshot steps (``config.snapshot_steps``).

        Adam (``adam_update``) starts from fresh state for every batch inside one graph. The
        loss is the sum of per-image scores, so images do not interact and a batch equals its
        single images.
        """
        _, middle, last = config.snapshot_steps
        m, v = tf.zeros_like(z), tf.zeros_like(z)
        first = mid = tf.zeros_like(images)
        for t in tf.range(last if steps is None else steps):
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
            with prepared_transposes(self.generator, self.discriminator):
                _, real_features = self.discriminator(images, labels, training=False)
                if last:
                    z, first, mid = self.adam_steps(images, labels, z, real_features, config)
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
            return SearchResult.best_of([
                self.search(images, condition, z0, config)
                for condition in self.condition_labels(tf.shape(images)[0])])
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

    def _search_fn(self, config):
        """The compiled search for ``config``, built once per configuration."""
        # Restarts only widen the batch, and the starting z comes in: neither changes the graph.
        config = dataclasses.replace(config, restarts=1, z_init="random")
        if config not in self._searches:
            self._searches[config] = on_replicas(self.strategy, self._search_graph(config))
        return self._searches[config]

    def score_batches(self, dataset, config, total_batches=None, seed=0):
        """Yields (images, ``SearchResult``) per batch of ``dataset`` ((images, labels) batches).

        Image i starts from its own U(-1, 1) z drawn from (``seed``, i) (or from E(x)), so its
        result does not depend on the batch size.
        """
        start = 0
        for images, labels in tqdm(dataset, total=total_batches, desc="anomaly search",
                                   unit="batch"):
            count = int(tf.shape(images)[0])
            z0 = batch_starts(range(start, start + count), self.config.z_dim, seed, config)
            start += count
            yield images.numpy(), self.search(images, labels, z0, config)

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

    @functools.cached_property
    def _critic_fn(self):
        cfg = self.config
        return tf.function(
            lambda images, labels: critic_score(
                self.discriminator(images, labels, training=False)[0]),
            input_signature=[tf.TensorSpec((None, cfg.output_height, cfg.output_width, cfg.c_dim)),
                             tf.TensorSpec((None, cfg.y_dim))])

    def condition_labels(self, count):
        """The label batches (count, y_dim) an image is tried under when it is not told its
        own: one one-hot batch per label a conditional model was trained on, else one empty."""
        if not self.config.y_dim:
            return [tf.zeros((count, 0))]
        return [tf.one_hot(tf.fill([count], k), self.config.y_dim)
                for k in self.config.conditions]

    def critic_scores(self, images):
        """``critic_score`` of each image (D in inference mode), as numpy; a conditional D's
        lowest over the labels it was trained on (the image is never told its own)."""
        images = tf.convert_to_tensor(images, tf.float32)
        return np.min([self._critic_fn(images, labels).numpy()
                       for labels in self.condition_labels(tf.shape(images)[0])], axis=0)

    def generate(self, z, labels=None):
        """G(z) in inference mode (batch-norm moving statistics)."""
        labels = np.zeros((len(z), 0), np.float32) if labels is None else labels
        return self.generator(tf.convert_to_tensor(z, tf.float32),
                              tf.convert_to_tensor(labels, tf.float32), training=False).numpy()

    def visualize(self, option, sample_dir, batch_size, seed=0):
        """The original's visualisations of G (``samples.visualize``); the written paths."""
        return samples.visualize(self, option, sample_dir, batch_size, seed)
