"""The DCGAN of carpedm20/DCGAN-tensorflow in TensorFlow 2, and the AnoGAN latent search."""

import contextlib
import dataclasses
import functools
import json
import math
import signal
import tempfile
import threading
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

import utils
from ops import Deconv2D, batch_norm, conv2d, conv_cond_concat, frozen, halve, linear, lrelu


class CheckpointError(Exception):
    """A checkpoint that is missing or was built for another model shape."""


class TrainingInterrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM after saving a checkpoint."""


class TrainingDiverged(Exception):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The shapes that build a DCGAN; saved as ``config.json`` beside its checkpoints."""

    output_height: int
    output_width: int
    c_dim: int
    z_dim: int = 100
    y_dim: int = 0
    gf_dim: int = 64
    df_dim: int = 64
    gfc_dim: int = 1024
    dfc_dim: int = 1024

    @property
    def value_range(self):
        """Pixel range of G's output: [0, 1] (sigmoid) when conditional, else [-1, 1]."""
        return (0.0, 1.0) if self.y_dim else (-1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters and output places of one training run."""

    epochs: int = 25
    learning_rate: float = 0.0002
    beta1: float = 0.5
    save_every: int = 500
    sample_every: int = 100
    sample_dir: str = "samples"
    log_dir: str = "logs"


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The AnoGAN latent search: Adam on z for ``steps`` steps, then the anomaly score.

    ``restarts`` starting points per image keep the lowest final score; ``clip_z`` keeps z in
    the prior's range [-1, 1] after each step. The defaults are the original's search.
    """

    steps: int = 100
    learning_rate: float = 0.001
    beta1: float = 0.5
    ano_lambda: float = 0.1
    dis_loss: str = "feature"
    restarts: int = 1
    clip_z: bool = False

    @property
    def snapshot_steps(self):
        """The steps whose G(z) is kept: first, middle and last, as the original."""
        return 0, self.steps // 2, self.steps


@dataclasses.dataclass
class SearchResult:
    """Numpy results of the latent search for one batch of images."""

    score: np.ndarray
    residual: np.ndarray
    discrimination: np.ndarray
    z: np.ndarray
    snapshots: dict

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
    """image -> (logit, features): four strided convs (BN after the first), linear to 1.

    ``features`` is the last conv block, the f(x) of AnoGAN's feature matching.
    """

    def __init__(self, config):
        super().__init__(name="discriminator")
        self.convs = [conv2d(config.df_dim * 2 ** i, name=f"d_h{i}_conv") for i in range(4)]
        self.bns = [None] + [batch_norm(name=f"d_bn{i}") for i in range(1, 4)]
        self.logit = linear(1, name="d_h4_lin")

    def call(self, images, y=None, training=False):
        h = images
        for conv, bn in zip(self.convs, self.bns):
            h = conv(h)
            h = lrelu(h if bn is None else bn(h, training=training))
        return self.logit(tf.reshape(h, (tf.shape(h)[0], -1))), h


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
    """(image, y) -> (logit, features): the original's class-conditional MNIST discriminator."""

    def __init__(self, config):
        super().__init__(name="discriminator")
        self.conv0 = conv2d(config.c_dim + config.y_dim, name="d_h0_conv")
        self.conv1 = conv2d(config.df_dim + config.y_dim, name="d_h1_conv")
        self.fc2 = linear(config.dfc_dim, name="d_h2_lin")
        self.logit = linear(1, name="d_h3_lin")
        self.bn1 = batch_norm(name="d_bn1")
        self.bn2 = batch_norm(name="d_bn2")

    def call(self, images, y=None, training=False):
        h = lrelu(self.conv0(conv_cond_concat(images, y)))
        features = lrelu(self.bn1(self.conv1(conv_cond_concat(h, y)), training=training))
        h = tf.concat([tf.reshape(features, (tf.shape(features)[0], -1)), y], 1)
        h = lrelu(self.bn2(self.fc2(h), training=training))
        return self.logit(tf.concat([h, y], 1)), features


@functools.cache
def make_strategy(name="default", devices=None):
    """The tf.distribute strategy called ``name`` (default, mirrored or multiworker).

    One per process and configuration: strategies own process-wide collective keys, and two
    alike would collide.
    """
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices.split(",") if devices else None)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """False only for the non-chief workers of a multi-worker strategy."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return not has_chief and resolver.task_type == "worker" and resolver.task_id == 0


@contextlib.contextmanager
def stop_requests():
    """An Event set by the first SIGINT or SIGTERM (a second SIGINT interrupts at once).

    Training checks it between steps, so a checkpoint is never cut short mid-write.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def sample_inputs(config, count, seed=0):
    """The fixed (z, labels) of the training sample grids; labels cycle through the classes."""
    z = np.random.default_rng(seed).uniform(-1, 1, (count, config.z_dim)).astype(np.float32)
    if config.y_dim:
        return z, utils.one_hot(np.arange(count) % config.y_dim, config.y_dim)
    return z, np.zeros((count, 0), np.float32)


def starting_z(indices, z_dim, seed=0, restarts=1):
    """The latent search's U(-1, 1) starting z of each image index, reproducible from ``seed``.

    (batch, z_dim); with several ``restarts``, (restarts, batch, z_dim), the first as with one.
    """
    def draw(i, restart):
        key = [seed, i] if restart == 0 else [seed, i, restart]
        return np.random.default_rng(key).uniform(-1.0, 1.0, z_dim)

    z = np.array([[draw(i, r) for i in indices] for r in range(restarts)], np.float32)
    return z[0] if restarts == 1 else z


def per_example_bce(logits, target):
    """Sigmoid cross-entropy of each example's logit against a constant target."""
    return tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.fill(tf.shape(logits), target), logits=logits), axis=1)


class DCGAN:
    """Generator, discriminator, their optimisers and checkpoints, training and sampling."""

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
            self.d_optim = keras.optimizers.Adam(self.train_config.learning_rate,
                                                 beta_1=self.train_config.beta1)
            self.g_optim = keras.optimizers.Adam(self.train_config.learning_rate,
                                                 beta_1=self.train_config.beta1)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self._build()
        self.checkpoint = tf.train.Checkpoint(
            generator=self.generator, discriminator=self.discriminator,
            d_optim=self.d_optim, g_optim=self.g_optim, step=self.step)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.checkpoint_dir), 3)
        self._searches = {}

    def _build(self):
        """Creates every variable now, so that a restore fills them all at once."""
        z = tf.zeros((1, self.config.z_dim))
        y = tf.zeros((1, self.config.y_dim))
        images = self.generator(z, y)
        self.discriminator(images, y)
        self.d_optim.build(self.discriminator.trainable_variables)
        self.g_optim.build(self.generator.trainable_variables)

    # Checkpoints -----------------------------------------------------------------------------

    @property
    def config_path(self):
        return self.checkpoint_dir / "config.json"

    def load(self):
        """Restores the latest checkpoint; False when there is none.

        Raises ``CheckpointError`` when the checkpoint was built with other shapes.
        """
        latest = self.manager.latest_checkpoint
        if latest is None:
            return False
        if self.config_path.exists():
            saved = json.loads(self.config_path.read_text())
            wanted = dataclasses.asdict(self.config)
            differing = sorted(k for k in wanted.keys() | saved.keys()
                               if saved.get(k) != wanted.get(k))
            if differing:
                details = ", ".join(f"{k}: checkpoint {saved.get(k)} vs now {wanted.get(k)}"
                                    for k in differing)
                raise CheckpointError(f"checkpoint in {self.checkpoint_dir} was built with other "
                                      f"shapes ({details}); use another --checkpoint_dir")
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise CheckpointError(f"cannot restore {latest}: {str(error).splitlines()[0]}") \
                from error
        return True

    @property
    def steps_done(self):
        """Training steps taken so far (restored with the checkpoint)."""
        return int(self.step.numpy())

    @property
    def is_chief(self):
        """Whether this process writes checkpoints and outputs (always, but for non-chief
        workers of a multi-worker strategy)."""
        return is_chief(self.strategy)

    def save(self):
        """Writes a checkpoint at the current step, and the model's config.json.

        Every worker must call this (saving is collective); non-chief workers write to a
        temporary folder that is removed at once.
        """
        if not self.is_chief:
            with tempfile.TemporaryDirectory() as scratch:
                tf.train.CheckpointManager(self.checkpoint, scratch, 1).save()
            return None
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        utils.write_text(self.config_path, json.dumps(dataclasses.asdict(self.config), indent=2))
        return self.manager.save(checkpoint_number=self.steps_done)

    # Training --------------------------------------------------------------------------------

    def _train_step(self, images, labels, z, global_batch):
        """One D update, then two G updates on the same z (the original's schedule)."""
        def average(losses):
            return tf.nn.compute_average_loss(losses, global_batch_size=global_batch)

        with tf.GradientTape() as tape:
            real_logits, _ = self.discriminator(images, labels, training=True)
            fake = self.generator(z, labels, training=True)
            fake_logits, _ = self.discriminator(fake, labels, training=True)
            d_loss = average(per_example_bce(real_logits, 1.0) + per_example_bce(fake_logits, 0.0))
        variables = self.discriminator.trainable_variables
        self.d_optim.apply_gradients(zip(tape.gradient(d_loss, variables), variables))
        g_loss = tf.constant(0.0)
        for _ in range(2):
            with tf.GradientTape() as tape:
                fake_logits, _ = self.discriminator(
                    self.generator(z, labels, training=True), labels, training=True)
                g_loss = average(per_example_bce(fake_logits, 1.0))
            variables = self.generator.trainable_variables
            self.g_optim.apply_gradients(zip(tape.gradient(g_loss, variables), variables))
        return d_loss, g_loss

    def _distributed_train_step(self, global_batch):
        """A compiled step that runs ``_train_step`` on every replica and sums the losses."""
        @tf.function
        def step(images, labels, z):
            d_loss, g_loss = self.strategy.run(self._train_step,
                                               args=(images, labels, z, global_batch))
            self.step.assign_add(1)
            total = tf.distribute.ReduceOp.SUM
            return (self.strategy.reduce(total, d_loss, axis=None),
                    self.strategy.reduce(total, g_loss, axis=None))
        return step

    def train(self, dataset, steps_per_epoch, batch_size, sample_inputs, seed=0):
        """Trains until ``epochs`` epochs of ``steps_per_epoch`` batches are done.

        ``dataset`` yields (images, labels) batches of ``batch_size`` and is iterated once per
        epoch; ``sample_inputs`` is the fixed (z, labels) of the sample grids. Resumes from
        ``self.step``. Returns the list of (d_loss, g_loss) of this run.
        """
        cfg = self.train_config
        step_fn = self._distributed_train_step(batch_size)
        writer = (tf.summary.create_file_writer(cfg.log_dir) if self.is_chief
                  else tf.summary.create_noop_writer())
        history = []
        first_epoch = self.steps_done // steps_per_epoch
        try:
            with stop_requests() as stop:
                for epoch in range(first_epoch, cfg.epochs):
                    history += self._train_epoch(dataset, epoch, steps_per_epoch, step_fn,
                                                 sample_inputs, writer, seed, stop)
        except KeyboardInterrupt:
            path = self.save()
            raise TrainingInterrupted(f"interrupted at step {self.steps_done}; saved {path}: run "
                                      "--train again to resume") from None
        self.save()
        writer.flush()
        return history

    def _train_epoch(self, dataset, epoch, steps_per_epoch, step_fn, sample_inputs, writer, seed,
                     stop):
        """The rest of one epoch from ``self.step``; returns its (d_loss, g_loss) pairs."""
        cfg = self.train_config
        done = self.steps_done - epoch * steps_per_epoch
        batches = self._with_noise(dataset, seed + epoch).take(steps_per_epoch - done)
        history = []
        with tqdm(self.strategy.experimental_distribute_dataset(batches), total=steps_per_epoch,
                  initial=done, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                  leave=False) as bar:
            for images, labels, z in bar:
                d_loss, g_loss = (float(v) for v in step_fn(images, labels, z))
                step = self.steps_done
                if not (math.isfinite(d_loss) and math.isfinite(g_loss)):
                    raise TrainingDiverged(
                        f"losses became non-finite at step {step} (d_loss {d_loss}, g_loss "
                        f"{g_loss}); the last good checkpoint in {self.checkpoint_dir} is kept: "
                        "lower --learning_rate")
                history.append((d_loss, g_loss))
                bar.set_postfix(d_loss=f"{d_loss:.4f}", g_loss=f"{g_loss:.4f}")
                with writer.as_default(step=step):
                    tf.summary.scalar("d_loss", d_loss)
                    tf.summary.scalar("g_loss", g_loss)
                if step % cfg.sample_every == 0 and self.is_chief:
                    self.save_samples(sample_inputs, epoch, step - epoch * steps_per_epoch, writer)
                if step % cfg.save_every == 0:
                    self.save()
                if stop.is_set():
                    raise KeyboardInterrupt
        tqdm.write(f"epoch {epoch + 1}/{cfg.epochs} done: step {self.steps_done}"
                   + (f", d_loss {history[-1][0]:.4f}, g_loss {history[-1][1]:.4f}"
                      if history else ""))
        return history

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

    def _anomaly_losses(self, images, labels, z, target_features, search):
        """Per-image (score, residual, discrimination) of G(z) against ``images``, and G(z)."""
        fake = self.generator(z, labels, training=False)
        logits, features = self.discriminator(fake, labels, training=False)
        residual = tf.reduce_sum(tf.abs(images - fake), axis=[1, 2, 3])
        if search.dis_loss == "feature":
            discrimination = tf.reduce_sum(tf.abs(target_features - features), axis=[1, 2, 3])
        else:
            discrimination = per_example_bce(logits, 1.0)
        score = (1.0 - search.ano_lambda) * residual + search.ano_lambda * discrimination
        return score, residual, discrimination, fake

    def _search_graph(self, search):
        """A compiled whole search for one batch: ``search.steps`` Adam steps on z.

        Adam is the original's (tf.train.AdamOptimizer: beta2 0.999, epsilon 1e-8), written
        out so that every batch starts from fresh state inside one graph. The loss is the sum
        of per-image scores, so images do not interact and a batch equals its single images.
        The weights are fixed, so the convolutions' transposed filters are prepared once; any
        batch size runs the same graph (traced once).
        """
        beta1, beta2, epsilon = search.beta1, 0.999, 1e-8
        _, middle, last = search.snapshot_steps
        cfg = self.config
        signature = [tf.TensorSpec((None, cfg.output_height, cfg.output_width, cfg.c_dim)),
                     tf.TensorSpec((None, cfg.y_dim)), tf.TensorSpec((None, cfg.z_dim))]

        @tf.function(input_signature=signature)
        def run(images, labels, z0):
            with frozen(self.generator, self.discriminator):
                _, target_features = self.discriminator(images, labels, training=False)
                z, m, v = z0, tf.zeros_like(z0), tf.zeros_like(z0)
                first = mid = tf.zeros_like(images)
                for t in tf.range(last):
                    with tf.GradientTape() as tape:
                        tape.watch(z)
                        score, _, _, fake = self._anomaly_losses(
                            images, labels, z, target_features, search)
                        total = tf.reduce_sum(score)
                    if t == 0:
                        first = fake
                    if t == middle:
                        mid = fake
                    grad = tape.gradient(total, z)
                    step = tf.cast(t + 1, tf.float32)
                    m = beta1 * m + (1.0 - beta1) * grad
                    v = beta2 * v + (1.0 - beta2) * tf.square(grad)
                    rate = (search.learning_rate * tf.sqrt(1.0 - beta2 ** step)
                            / (1.0 - beta1 ** step))
                    z = z - rate * m / (tf.sqrt(v) + epsilon)
                    if search.clip_z:
                        z = tf.clip_by_value(z, -1.0, 1.0)
                score, residual, discrimination, fake = self._anomaly_losses(
                    images, labels, z, target_features, search)
                if middle == last:
                    mid = fake
                return score, residual, discrimination, z, first, mid, fake

        return run

    def search(self, images, labels, z0, search):
        """Searches z for a batch of images from the starting ``z0``; a ``SearchResult``.

        ``z0`` is (batch, z_dim), or (restarts, batch, z_dim): then each image is searched
        from all its starting points in one larger batch, and its lowest score is kept.
        ``labels`` are one-hot rows for a conditional model; when they have no columns the
        search runs once per class and keeps each image's lowest score.
        """
        run = self._search_fn(search)
        images = tf.convert_to_tensor(images, tf.float32)
        z0 = tf.convert_to_tensor(z0, tf.float32)
        labels = tf.convert_to_tensor(labels, tf.float32)
        if z0.shape.rank == 3:
            restarts = z0.shape[0]
            result = self.search(tf.tile(images, [restarts, 1, 1, 1]),
                                 tf.tile(labels, [restarts, 1]),
                                 tf.reshape(z0, [-1, self.config.z_dim]), search)
            return SearchResult.best_of(result.split(restarts))
        if self.config.y_dim and labels.shape[1] == 0:
            return SearchResult.best_of([
                self.search(images, tf.one_hot(tf.fill([tf.shape(images)[0]], k),
                                               self.config.y_dim), z0, search)
                for k in range(self.config.y_dim)])
        score, residual, discrimination, z, *snapshots = (
            value.numpy() for value in run(images, labels, z0))
        return SearchResult(score, residual, discrimination, z,
                            dict(zip(search.snapshot_steps, snapshots)))

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

    def _search_fn(self, search):
        """The compiled search for ``search``, built once per configuration."""
        search = dataclasses.replace(search, restarts=1)  # restarts only widen the batch
        if search not in self._searches:
            self._searches[search] = self._on_replicas(self._search_graph(search))
        return self._searches[search]

    def anomaly_test(self, dataset, search, total_batches=None, seed=0):
        """Yields (images, ``SearchResult``) per batch of ``dataset`` ((images, labels) batches).

        Image i starts from its own U(-1, 1) z drawn from (``seed``, i), so its result does
        not depend on the batch size.
        """
        start = 0
        for images, labels in tqdm(dataset, total=total_batches, desc="anomaly search",
                                   unit="batch"):
            count = int(tf.shape(images)[0])
            z0 = starting_z(range(start, start + count), self.config.z_dim, seed,
                            search.restarts)
            start += count
            yield images.numpy(), self.search(images, labels, z0, search)

    # Sampling --------------------------------------------------------------------------------

    def generate(self, z, labels=None):
        """G(z) in inference mode (batch-norm moving statistics)."""
        labels = np.zeros((len(z), 0), np.float32) if labels is None else labels
        return self.generator(tf.convert_to_tensor(z, tf.float32),
                              tf.convert_to_tensor(labels, tf.float32), training=False).numpy()

    def save_samples(self, sample_inputs, epoch, index, writer=None):
        """Writes the grid of G on the fixed sample inputs, as the original's train_XX_XXXX.png."""
        images = self.generate(*sample_inputs)
        path = Path(self.train_config.sample_dir) / f"train_{epoch:02d}_{index:04d}.png"
        utils.save_images(images, path, value_range=self.config.value_range)
        if writer is not None:
            low, high = self.config.value_range
            with writer.as_default(step=self.steps_done):
                tf.summary.image("samples", (images - low) / (high - low), max_outputs=8)
        return path

    def visualize(self, option, sample_dir, batch_size, seed=0):
        """The original's visualisations of a trained G; returns the written paths."""
        rng = np.random.default_rng(seed)
        z_dim, sample_dir = self.config.z_dim, Path(sample_dir)
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime())
        values = np.arange(0, 1, 1.0 / batch_size)[:batch_size]

        def labels():
            if not self.config.y_dim:
                return None
            return utils.one_hot(rng.integers(0, self.config.y_dim, batch_size),
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
