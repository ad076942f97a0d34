"""The jobs of one command, in the order they run: train the GAN (with retries when its health
check fails), train the encoder, the anomaly test (scores, automatic threshold, report), the
original's visualisations and the SavedModel export.

Each takes the ``Job`` that main.py resolves from the flags once: the flags, the data
(``inputs.DataSpec``), the checkpoint folder and the configurations. ``UsageError`` is a job
(or a flag) that cannot be done as asked.
"""

import argparse
import dataclasses
import errno
import functools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

import config
import evaluation
import export
import health
import inputs
import model
import runtime
import samples
import scoring
import utils
from search import batch_starts


class UsageError(Exception):
    """Flags that contradict each other or are out of range."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One command, resolved once from its flags (main.py's ``resolve``) and handed to every
    job: the flags as parsed, the data they name, the model's checkpoint folder and the
    configurations they make (``model_config`` with three channels until the images tell)."""

    flags: argparse.Namespace
    data: inputs.DataSpec
    checkpoint_dir: Path
    model_config: config.ModelConfig
    train_config: config.TrainConfig
    search_config: config.SearchConfig


def check_writable(folder, flag):
    """UsageError unless files can be written into ``folder``, or into the nearest folder
    above it that exists (nothing is created)."""
    existing = next(p for p in (Path(folder), *Path(folder).parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UsageError(f"{flag} {folder} is not writable ({error.strerror or error}): fix "
                         "its permissions or choose another folder") from None


def training_split(job):
    """The training images, split (``DataSpec.training_split``), with the images used per
    epoch (capped by --train_size) and the steps per epoch: (all, trained on, held out, used
    per epoch, steps per epoch). In patch mode the trained-on and held-out images are
    ``inputs.PatchImages`` (held out: None when there are none) and an epoch is as many
    patches as cover the trained-on images once."""
    source, train, held_out = job.data.training_split()
    if job.data.patches:
        spec = job.data.image_spec(job.model_config.value_range)
        train = inputs.PatchImages(train, spec)
        held_out = inputs.PatchImages(held_out, spec) if len(held_out) else None
        usable = train.patches_per_epoch()
        return source, train, held_out, usable, math.ceil(usable / job.flags.batch_size)
    usable = int(min(len(train), job.flags.train_size))
    steps_per_epoch = usable // job.flags.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"{usable} training images are fewer than --batch_size "
                         f"{job.flags.batch_size}: lower --batch_size or add images")
    return source, train, held_out, usable, steps_per_epoch


def trained_on(job, usable):
    """What an epoch trains on, in words: ``usable`` images, or patches in patch mode."""
    data = job.data
    if data.patches:
        return (f"{usable} {data.patch_size}x{data.patch_size} patches an epoch of the images "
                f"of {data.dataset} at scale {data.image_scale:g}")
    return f"{usable} images of {data.dataset}"


def image_spec(job, dcgan):
    """How ``job``'s images become inputs of ``dcgan`` (its value range)."""
    return job.data.image_spec(dcgan.config.value_range)


def training_dataset(job, dcgan, images, seed=None):
    """Shuffled training batches of ``images`` for ``dcgan`` (the last partial one dropped),
    shuffled by ``seed`` (default --seed); random patches, drawn afresh every epoch, of
    ``inputs.PatchImages``."""
    seed = job.flags.seed if seed is None else seed
    if isinstance(images, inputs.PatchImages):
        return images.dataset(job.flags.batch_size, seed)
    return inputs.make_dataset(images, image_spec(job, dcgan), job.flags.batch_size,
                               y_dim=dcgan.config.y_dim,
                               shuffle_seed=seed, drop_remainder=True)


def build_model(job, channels):
    """The DCGAN for these flags with ``channels``, restored from its checkpoint when one
    exists (its recovery warnings printed); (model, whether it was restored)."""
    flags = job.flags
    dcgan = model.DCGAN(dataclasses.replace(job.model_config, c_dim=channels),
                        job.checkpoint_dir, job.train_config,
                        strategy=runtime.make_strategy(flags.strategy, flags.devices))
    restored = dcgan.load()
    for line in dcgan.warnings:
        print(line, file=sys.stderr)
    return dcgan, restored


def health_images(job, dcgan, train, held_out):
    """The real images of the health check (``health.RealImages``), or None for fewer than 4
    training images: up to 256 training images as queries, up to 1,000 others as references,
    and up to 64 held-out images (training images when none are held out). In patch mode
    they are random patches of the images: 256 queries, 1,000 references and 64 held out."""
    if isinstance(train, inputs.PatchImages):
        seed = job.flags.seed
        held_images, held_labels = (held_out or train).arrays(64, seed + 2)
        return health.RealImages(train.arrays(256, seed)[0], train.arrays(1000, seed + 1)[0],
                                 held_images, held_labels, dcgan.config.value_range)
    if len(train) < 4:
        return None
    order = np.random.default_rng(job.flags.seed).permutation(len(train))
    queries = order[:min(256, len(train) // 2)]
    references = order[len(queries):len(queries) + 1000]
    shown = held_out if len(held_out) else train.subset(queries)

    def arrays(source):
        return inputs.arrays(source, image_spec(job, dcgan), dcgan.config.y_dim)

    held_images, held_labels = arrays(shown.subset(range(min(64, len(shown)))))
    return health.RealImages(arrays(train.subset(np.sort(queries)))[0],
                             arrays(train.subset(np.sort(references)))[0], held_images,
                             held_labels, dcgan.config.value_range)


def warn(result, what="training", gan="dcgan"):
    """Prints a failed health verdict's warning line on stderr."""
    line = health.warning_line(result, what, gan)
    if line:
        print(line, file=sys.stderr)


def train(job):
    """Trains the GAN; when its health check fails at the end of a training begun here, starts
    again with the next seed, up to --retries times (the failed one is set aside)."""
    flags = job.flags
    source, train_images, held_out, usable, steps_per_epoch = training_split(job)
    for attempt in range(flags.retries + 1):
        dcgan, resumed = build_model(job, source.channels)
        result = train_once(job, dcgan, resumed, train_images, held_out, usable,
                            steps_per_epoch, flags.seed + attempt)
        if result is None or result["passed"] or resumed or attempt == flags.retries:
            break
        rejected = dcgan.set_aside(f"rejected_seed{flags.seed + attempt}")
        print(f"training with --seed {flags.seed + attempt} failed its health check (kept in "
              f"{rejected}): training again with seed {flags.seed + attempt + 1}")
        keras.utils.set_random_seed(flags.seed + attempt + 1)
    print(f"checkpoint: {dcgan.checkpoints.latest} (seed {dcgan.training_seed})")


def train_once(job, dcgan, resumed, train_images, held_out, usable, steps_per_epoch, seed):
    """Trains (or resumes) one GAN; returns its final health verdict (None without one)."""
    flags = job.flags
    reals = health_images(job, dcgan, train_images, held_out)
    with dcgan.exclusive():
        if resumed:
            seed = dcgan.training_seed if dcgan.training_seed is not None else seed
            print(f"resuming from step {dcgan.steps_done} in {dcgan.checkpoint_dir}")
        epochs = job.train_config.epochs_for(steps_per_epoch)
        if dcgan.steps_done >= epochs * steps_per_epoch:
            print(f"already trained {dcgan.steps_done} steps ({epochs} epochs): raise "
                  "--epoch or --min_steps to train more")
            if dcgan.health["gan"] is None and reals is not None:
                dcgan.training_seed = seed if dcgan.training_seed is None else dcgan.training_seed
                dcgan.check_health(reals, "gan")
                dcgan.write_config()
        else:
            print(f"training on {trained_on(job, usable)}, {steps_per_epoch} steps per epoch, "
                  f"seed {seed}")
            dcgan.train(training_dataset(job, dcgan, train_images, seed), steps_per_epoch,
                        flags.batch_size,
                        samples.sample_inputs(dcgan.config, flags.batch_size, seed), seed=seed,
                        reals=reals)
    warn(dcgan.health["gan"], gan=dcgan.config.gan)
    return dcgan.health["gan"]


def train_encoder(job):
    source, train_images, held_out, usable, steps_per_epoch = training_split(job)
    dcgan, restored = build_model(job, source.channels)
    if not restored:
        raise UsageError(f"no trained GAN in {dcgan.checkpoint_dir}: train it first (--train "
                         "with the same --dataset and sizes), then --train_encoder")
    cfg = job.train_config
    reals = health_images(job, dcgan, train_images, held_out)
    rule = reals is not None and cfg.encoder_patience > 0
    epochs = cfg.encoder_epochs_for(steps_per_epoch, rule)
    with dcgan.exclusive():
        trained_for = dcgan.encoder_trained_for
        stopped = (dcgan.encoder_stop is not None
                   and dcgan.encoder_steps_done >= cfg.encoder_min_steps)
        if trained_for not in (None, dcgan.steps_done):
            print(f"the encoder was trained for G at step {trained_for}; G is now at step "
                  f"{dcgan.steps_done}: training it again")
        elif stopped or dcgan.encoder_steps_done >= epochs * steps_per_epoch:
            print(f"encoder already trained {dcgan.encoder_steps_done} steps: raise "
                  + ("--encoder_min_steps" if rule else "--encoder_epoch or --encoder_min_steps")
                  + " to train more")
            warn(dcgan.health["encoder"], "encoder", dcgan.config.gan)
            return
        elif dcgan.encoder_steps_done:
            print(f"resuming the encoder from step {dcgan.encoder_steps_done}")
        length = (f"until its held-out residual stops falling (checked every "
                  f"{cfg.encoder_check_every} steps; {cfg.encoder_min_steps} to "
                  f"{cfg.encoder_max_steps} steps)" if rule
                  else f"{epochs} epochs of {steps_per_epoch} steps")
        print(f"training the encoder on {trained_on(job, usable)}: {length}")
        sample_images = reconstruction_samples(job, dcgan, train_images, held_out)
        dcgan.train_encoder(training_dataset(job, dcgan, train_images), steps_per_epoch,
                            job.flags.batch_size, sample_images, reals)
    stop = dcgan.encoder_stop
    if stop is not None:
        print(health.stop_line(stop, cfg.encoder_patience))
    result = dcgan.health["encoder"]
    if result is not None:
        print("encoder health: " + health.summary_line(result))
    warn(result, "encoder", dcgan.config.gan)
    print(f"encoder checkpoint: {dcgan.encoder_checkpoints.latest}")


def reconstruction_samples(job, dcgan, train, held_out):
    """Up to 32 held-out images (training images when none are held out), or patches of
    them, and their labels: the encoder's x beside G(E(x)) grids."""
    if isinstance(train, inputs.PatchImages):
        return (held_out or train).arrays(32, job.flags.seed + 3)
    shown = held_out if len(held_out) else train
    return inputs.arrays(shown.subset(range(min(32, len(shown)))), image_spec(job, dcgan),
                         dcgan.config.y_dim)


def saved_channels(job):
    """The channel count in the checkpoint's config.json, or None without a usable one."""
    try:
        channels = json.loads((job.checkpoint_dir / "config.json").read_text()).get("c_dim")
    except (OSError, ValueError, AttributeError):
        return None
    return channels if channels in (1, 3) else None


def trained_model(job):
    """A restored DCGAN, or UsageError telling to train first. Its channel count comes from
    its config.json, else from the training images (read without decoding them)."""
    channels = saved_channels(job) or job.data.training_source(check=False).channels
    dcgan, restored = build_model(job, channels)
    if not restored:
        raise UsageError(f"no checkpoint in {dcgan.checkpoint_dir}: train a model first "
                         "(python main.py --train with the same --dataset and sizes)")
    return dcgan


def visualize(job):
    flags = job.flags
    dcgan = trained_model(job)
    count = flags.generate_test_images if flags.visualize_option == 0 else flags.batch_size
    paths = dcgan.visualize(flags.visualize_option, flags.sample_dir, count, flags.seed)
    print(f"wrote {len(paths)} file(s) to {flags.sample_dir}")


def score_source(job, dcgan, source, search, report=None):
    """Runs the latent search ``search`` over ``source`` (every tile of each image in patch
    mode); feeds ``report`` or returns the scores."""
    flags = job.flags
    if job.data.patches:
        return score_tiles(job, dcgan, source, search, report)
    dataset = inputs.make_dataset(source, image_spec(job, dcgan), flags.test_batch_size,
                                  y_dim=dcgan.config.y_dim)
    batches = math.ceil(len(source) / flags.test_batch_size)
    scores = []
    for images, result in dcgan.score_batches(dataset, search, batches, flags.seed):
        maps = scoring.detection_maps(images, result.final, dcgan.config.value_range, search)
        critic = functools.partial(dcgan.critic_scores, images)
        image_scores, maps = scoring.image_scores(flags.image_score, result.score, maps, critic,
                                                  search.map_sigma)
        result.score, maps = np.asarray(image_scores), maps.numpy()
        if report is not None:
            report.add(images, result, maps)
        scores.append(result.score)
    return np.concatenate(scores)


def score_tiles(job, dcgan, source, search, report=None):
    """Patch mode's ``score_source``: each image at its own resolution (times --image_scale),
    tiled at --patch_stride, its tiles searched --test_batch_size at a time and their maps
    stitched (``scoring.score_tiled_image``); one image in memory at a time."""
    flags, data = job.flags, job.data
    spec = image_spec(job, dcgan)
    scores = []
    for index in tqdm(range(len(source)), desc="anomaly search", unit="image"):
        pixels = utils.load_scaled_pixels(source.files[index], data.image_scale, source.channels)
        image = utils.scale_pixels(pixels[None].astype(np.float32), spec.value_range)

        def search_tiles(tiles, first, index=index):
            starts = search_starts(index, first, len(tiles), dcgan.config.z_dim, flags.seed,
                                   search)
            return dcgan.search(tiles, np.zeros((len(tiles), 0), np.float32), starts, search)

        result, maps = scoring.score_tiled_image(
            image, data.patch_size, data.patch_stride, flags.test_batch_size, search_tiles,
            dcgan.critic_scores, dcgan.config.value_range, search, flags.image_score)
        if report is not None:
            report.add(image, result, maps)
        scores.append(result.score)
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)


def search_starts(image, first, count, z_dim, seed, search):
    """The starting z of ``count`` tiles of one image from tile ``first`` on, reproducible
    from (``seed``, image, tile) whatever the batch size."""
    tile_seed = int(np.random.default_rng([seed, image]).integers(2 ** 31))
    return batch_starts(range(first, first + count), z_dim, tile_seed, search)


def choose_threshold(job, dcgan, search):
    """The threshold and its source: --threshold, else the 95th percentile of the held-out
    training images' scores under ``search`` (``automatic_threshold``); never the test
    images': their labels are what the threshold is measured on."""
    if job.flags.threshold != "auto":
        return job.flags.threshold, "manual"
    return automatic_threshold(job, dcgan, search)


THRESHOLDS = "thresholds.json"
"""The automatic thresholds kept in the checkpoint folder, each with what produced it."""

KEPT_THRESHOLDS = 20
HELD_OUT, TRAINING = "heldout_train_images", "train_images"
SOURCE_WORDS = {HELD_OUT: "held-out training images", TRAINING: "training images"}


def threshold_key(job, dcgan, search):
    """Everything the held-out images' scores depend on: a kept threshold is reused only when
    all of it matches (the model's steps and seed, the scoring flags, the images' split)."""
    flags = job.flags
    return {**scoring_mode(search, flags.image_score), "test_learning_rate": search.learning_rate,
            "beta1": search.beta1, "test_restarts": search.restarts,
            "test_clip_z": search.clip_z, "seed": flags.seed, "crop": flags.crop,
            "input_size": list(job.data.input_size), "gan_steps": dcgan.steps_done,
            "training_seed": dcgan.training_seed,
            "encoder_steps": dcgan.encoder_steps_done if search.z_init == "encoder" else None}


def kept_thresholds(dcgan):
    """The thresholds kept in ``dcgan``'s checkpoint folder (a list; empty when unreadable)."""
    try:
        kept = json.loads((dcgan.checkpoint_dir / THRESHOLDS).read_text())["thresholds"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [entry for entry in kept if isinstance(entry, dict)
            and {"key", "threshold", "images"} <= entry.keys()
            and entry.get("source") in SOURCE_WORDS]


def automatic_threshold(job, dcgan, search):
    """The 95th percentile of the held-out training images' scores under ``search``, and its
    source: the kept one when everything that produced it matches, else scored now and kept.
    A folder too small to hold images out (under 20) falls back to the training images
    themselves, with a warning: their scores are lower than unseen normal images'."""
    key = json.loads(json.dumps(threshold_key(job, dcgan, search)))
    kept = kept_thresholds(dcgan)
    for entry in kept:
        if entry["key"] == key:
            print(f"threshold {entry['threshold']:.6g}: the 95th percentile of "
                  f"{entry['images']} {SOURCE_WORDS[entry['source']]}, kept in "
                  f"{dcgan.checkpoint_dir / THRESHOLDS}")
            return entry["threshold"], entry["source"]
    source, _, held_out = job.data.training_split()
    images, threshold_source = (held_out, HELD_OUT) if len(held_out) else (source, TRAINING)
    if threshold_source == TRAINING:
        print(f"warning: {len(source)} training images are too few to hold any out (20 are "
              "needed): the automatic threshold comes from the images the GAN was trained on, "
              "and flags more normal images than 5%; add images or pass --threshold",
              file=sys.stderr)
    print(f"scoring {len(images)} {SOURCE_WORDS[threshold_source]} for the threshold")
    scores = score_source(job, dcgan, images, search)
    threshold = float(np.percentile(scores[np.isfinite(scores)], 95))
    if dcgan.is_chief:
        entry = {"key": key, "threshold": threshold, "source": threshold_source,
                 "images": len(images)}
        try:
            utils.write_json(dcgan.checkpoint_dir / THRESHOLDS,
                             {"thresholds": [*kept, entry][-KEPT_THRESHOLDS:]})
        except OSError as error:
            print(f"warning: the threshold could not be kept in {dcgan.checkpoint_dir} "
                  f"({error.strerror or error}): it will be scored again", file=sys.stderr)
    return threshold, threshold_source


def check_encoder(dcgan, what="--z_init encoder"):
    """UsageError unless an encoder trained for this G is there."""
    if dcgan.encoder_ready:
        return
    if dcgan.encoder_trained_for is None:
        raise UsageError(f"{what}: no trained encoder in {dcgan.checkpoint_dir}: run "
                         "--train_encoder first (same --dataset and sizes)")
    raise UsageError(f"{what}: the encoder in {dcgan.checkpoint_dir} was trained for "
                     f"G at step {dcgan.encoder_trained_for}, G is now at step "
                     f"{dcgan.steps_done}: run --train_encoder again")


def anomaly_test(job):
    dcgan = trained_model(job)
    if job.flags.z_init == "encoder":
        check_encoder(dcgan)
    check_writable(job.train_config.log_dir, "--log_dir")
    result_dir = job.data.result_folder()
    if result_dir.exists() and not (result_dir.is_dir() and (
            inputs.is_result_folder(result_dir) or not any(result_dir.iterdir()))):
        raise UsageError(f"--test_result_dir {job.flags.test_result_dir}: {result_dir} holds "
                         "files that are not an anomaly test's results (they would be "
                         "replaced): choose another name; nothing was touched")
    if dcgan.is_chief:
        with runtime.output_lock(result_dir, "anomaly test"):
            score_and_report(job, dcgan, result_dir)
        return
    with tempfile.TemporaryDirectory() as scratch:  # other workers search but write nothing
        score_and_report(job, dcgan, Path(scratch))


def score_and_report(job, dcgan, result_dir):
    """Scores the test images and writes every output into ``result_dir``."""
    flags = job.flags
    source = job.data.test_source(dcgan.config.c_dim)
    job.data.check_test_sizes(source)
    warn(dcgan.health["gan"], gan=dcgan.config.gan)
    if flags.z_init == "encoder":
        warn(dcgan.health["encoder"], "encoder", dcgan.config.gan)
    threshold, threshold_source = choose_threshold(job, dcgan, job.search_config)
    report = evaluation.AnomalyReport(result_dir, source, dcgan.config.value_range,
                                      mask_spec=image_spec(job, dcgan),
                                      figures=not flags.no_figures)
    restarts = f" from {flags.test_restarts} starting points" if flags.test_restarts > 1 else ""
    start = "E(x)" if flags.z_init == "encoder" else "U(-1, 1)"
    print(f"scoring {len(source)} images from z = {start}, {flags.test_epoch} search steps "
          f"each{restarts}")
    started = time.perf_counter()
    score_source(job, dcgan, source, job.search_config, report)
    seconds = time.perf_counter() - started
    metrics = report.finish(threshold, threshold_source, {
        "seconds": round(seconds, 3), "images_per_second": round(len(source) / seconds, 3),
        **scoring_mode(job.search_config, flags.image_score),
        "test_learning_rate": flags.test_learning_rate, "test_restarts": flags.test_restarts,
        "test_clip_z": flags.test_clip_z, "gan": dcgan.config.gan,
        "training_seed": dcgan.training_seed, "health": dcgan.health,
        "gan_steps": dcgan.steps_done,
        "encoder_steps": dcgan.encoder_steps_done if flags.z_init == "encoder" else None},
        tensorboard=(job.train_config.log_dir, dcgan.steps_done, flags.test_result_dir)
        if dcgan.is_chief else None)
    for name in metrics["non_finite"]:
        print(f"warning: {name}: anomaly score is not finite", file=sys.stderr)
    if len(source) <= 20:
        for name, score, flagged in report.rows():
            print(f"{name} {score:.6g} {'anomalous' if flagged else 'normal'}")
    print(f"results in {result_dir}: " + ", ".join(
        f"{k} {metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
        for k in ("n", "n_anomalous", "roc_auc", "pr_auc", "threshold")))


def scoring_mode(search, image_score):
    """What makes scores comparable (a threshold belongs to it), under the names of the flags
    as metrics.json records them."""
    return {"z_init": search.z_init, "test_epoch": search.steps, "score": search.score,
            "image_score": image_score, "ano_lambda": search.ano_lambda,
            "encoder_kappa": search.kappa, "dis_loss": search.dis_loss,
            "residual_shift": search.residual_shift, "residual_map": search.residual_map,
            "map_sigma": search.map_sigma}


def one_pass(search):
    """``search`` scoring in one pass from E(x), as the exported model does."""
    return dataclasses.replace(search, z_init="encoder", steps=0)


def export_model(job):
    """Writes the SavedModel of the trained GAN and encoder (--export)."""
    flags = job.flags
    dcgan = trained_model(job)
    check_encoder(dcgan, "--export")
    search = one_pass(job.search_config)
    threshold, source = choose_threshold(job, dcgan, search)
    spec = image_spec(job, dcgan)
    info = {"model": dataclasses.asdict(dcgan.config), "health": dcgan.health,
            "training_seed": dcgan.training_seed, "gan_steps": dcgan.steps_done,
            "encoder_steps": dcgan.encoder_steps_done, "threshold": threshold,
            "threshold_source": source, "mode": scoring_mode(search, flags.image_score),
            "input": {"size": spec.input_size, "crop": spec.crop, "scale": spec.scale,
                      "patch_stride": job.data.patch_stride if job.data.patches else None},
            "output_size": spec.output_size, "value_range": spec.value_range}
    try:
        folder = export.export_detector(dcgan, spec, search, flags.image_score, threshold,
                                        info, flags.export, job.data.patch_stride)
    except export.ExportError as error:
        raise UsageError(f"--export {flags.export}: {error}") from None
    print(f"exported to {folder}: threshold {threshold:.6g} ({source})")


def check_export_target(flags):
    """UsageError, before any work, when --export names a path it must not replace."""
    try:
        export.check_target(flags.export)
    except export.ExportError as error:
        raise UsageError(f"--export {flags.export}: {error}") from None
    check_writable(Path(os.path.abspath(flags.export)).parent, "--export")


def run(job):
    """Runs the jobs the flags ask for, in order."""
    flags = job.flags
    if flags.export:
        check_export_target(flags)
    if flags.anomaly_test:
        job.data.check_test_folder()
    keras.utils.set_random_seed(flags.seed)
    if flags.train:
        train(job)
    if flags.train_encoder:
        train_encoder(job)
    if flags.anomaly_test:
        anomaly_test(job)
    if flags.visualize:
        visualize(job)
    if flags.export:
        export_model(job)
