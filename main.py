"""AnoGAN in TensorFlow 2: train a DCGAN on normal images, then score unseen ones.

    python main.py --dataset mnist --normal_class 0 --train --anomaly_test
    python main.py --dataset mnist --normal_class 0 --train_encoder --anomaly_test \\
        --z_init encoder --test_epoch 0
"""

import argparse
import dataclasses
import errno
import json
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import runtime

runtime.import_tensorflow()  # before anything imports it: its start-up notices held back

import keras
import numpy as np

import evaluation
import export
import health
import inputs
import model
import utils


class UsageError(Exception):
    """Flags that contradict each other or are out of range."""


def digits_list(text):
    """Parses '0' or '1,7' into a sorted tuple of MNIST digits."""
    try:
        digits = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected digits like 0 or 1,7, got {text!r}") from None
    if not digits or not all(0 <= d <= 9 for d in digits):
        raise argparse.ArgumentTypeError(f"digits must be in 0..9, got {text!r}")
    return tuple(digits)


def finite_float(text):
    """A finite number (not nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def threshold_value(text):
    """'auto' or a finite number."""
    return text if text == "auto" else finite_float(text)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one stderr line and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser():
    """The original's flags (same names and defaults) and the port's new ones, by topic."""
    p = Parser(description=__doc__.splitlines()[0],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    boolean = argparse.BooleanOptionalAction

    jobs = p.add_argument_group("what to do (in this order)").add_argument
    jobs("--train", action=boolean, default=False, help="train the DCGAN")
    jobs("--train_encoder", action=boolean, default=False,
         help="train the izi_f encoder E of the trained GAN (f-AnoGAN; G and D frozen)")
    jobs("--anomaly_test", action=boolean, default=False, help="score the test images")
    jobs("--visualize", action=boolean, default=False, help="write visualisations of G")
    jobs("--export", default=None, metavar="DIR",
         help="write a SavedModel of the trained GAN and encoder that scores images in one "
              "pass (z = E(x)), with its threshold")

    data = p.add_argument_group("data").add_argument
    data("--dataset", default="celebA", help="mnist, or a folder name under --data_dir")
    data("--data_dir", default="data", help="where datasets live")
    data("--input_fname_pattern", default=None,
         help="glob of the training images [*.jpg; *.png for an MVTec AD-style folder]")
    data("--input_height", type=int, default=None,
         help="crop height (with --crop) [108; 28 for mnist]")
    data("--input_width", type=int, default=None, help="crop width [input_height]")
    data("--output_height", type=int, default=None,
         help="image height the model works at [64; 28 for mnist]")
    data("--output_width", type=int, default=None, help="image width [output_height]")
    data("--crop", action=boolean, default=False, help="centre-crop input_height x input_width")
    data("--normal_class", type=digits_list, default=None,
         help="MNIST digits that are normal, e.g. 0 or 1,7 (one-class training)")
    data("--train_size", type=float, default=math.inf, help="cap on training images per epoch")
    data("--mirror", action="append", default=[], metavar="URL",
         help="MNIST mirror tried before download.py's own when the files are missing")

    net = p.add_argument_group("model").add_argument
    net("--z_dim", type=int, default=100, help="latent size")
    net("--gf_dim", type=int, default=64, help="filters of G's last deconv (doubling inwards)")
    net("--df_dim", type=int, default=64, help="filters of D's first conv (doubling inwards)")
    net("--gan", choices=model.GANS, default="dcgan",
        help="dcgan: the original's losses and schedule; wgan_gp: f-AnoGAN's WGAN-GP (layer "
             "norm in the critic)")
    net("--y_dim", type=int, default=None,
        help="label size of the original's class-conditional MNIST DCGAN; 0 for the "
             "unconditional one [10 for mnist, else 0]")

    fit = p.add_argument_group("training").add_argument
    fit("--epoch", type=int, default=25, help="epochs to train")
    fit("--learning_rate", type=finite_float, default=None,
        help="Adam learning rate of G and D [0.0002; 0.0001 for wgan_gp]")
    fit("--beta1", type=finite_float, default=None,
        help="Adam beta1 of G and D [0.5; 0 for wgan_gp], and of the latent search [0.5]")
    fit("--beta2", type=finite_float, default=None,
        help="Adam beta2 of G and D [0.999; 0.9 for wgan_gp]")
    fit("--n_critic", type=int, default=5, help="wgan_gp: critic updates per G update")
    fit("--gp_weight", type=finite_float, default=10.0,
        help="wgan_gp: weight of the gradient penalty")
    fit("--retries", type=int, default=1,
        help="trainings started again with the next seed when the health check fails at the end")
    fit("--batch_size", type=int, default=64, help="training batch size")
    fit("--encoder_epoch", type=int, default=model.TrainConfig.encoder_epochs,
        help="epochs to train the encoder (at least --encoder_min_steps steps)")
    fit("--encoder_min_steps", type=int, default=model.TrainConfig.encoder_min_steps,
        help="fewest encoder training steps, whatever the folder's size")
    fit("--encoder_learning_rate", type=finite_float,
        default=model.TrainConfig.encoder_learning_rate, help="Adam learning rate of E")
    fit("--encoder_kappa", type=finite_float, default=1.0,
        help="weight of the feature term of izi_f (encoder loss and --score izif)")
    fit("--seed", type=int, default=0, help="seed of numpy and TensorFlow")

    test = p.add_argument_group("anomaly test").add_argument
    test("--test_dir", default=None,
         help="images to score (subfolders give labels) [test_data; the dataset's test/ for an "
              "MVTec AD-style folder]")
    test("--mask_dir", default=None,
         help="ground-truth masks <defect>/<stem>_mask.png for pixel-level metrics "
              "[ground_truth/ beside --test_dir]")
    test("--test_size", type=int, default=None, help="cap on the number of test images")
    test("--test_batch_size", type=int, default=64, help="test images searched together")
    test("--z_init", choices=model.Z_INITS, default="random",
         help="where the search starts: U(-1, 1) (the original) or E(x) (f-AnoGAN)")
    test("--test_epoch", type=int, default=100,
         help="latent-search steps per test image (0: score the starting z)")
    test("--test_learning_rate", type=finite_float, default=0.001,
         help="latent-search learning rate")
    test("--test_restarts", type=int, default=1,
         help="starting z per test image, searched together; the lowest score is kept")
    test("--test_clip_z", action=boolean, default=False,
         help="keep z in G's prior range [-1, 1] after every search step")
    test("--score", choices=model.SCORES, default="anogan",
         help="anogan: (1 - lambda) R + lambda D, sums of |.| (the original); izif: f-AnoGAN's "
              "mean squares, R + kappa D")
    test("--ano_lambda", type=finite_float, default=0.1, help="lambda of the anogan score")
    test("--dis_loss", choices=model.DIS_LOSSES, default="feature",
         help="discrimination loss of the anogan score")
    test("--image_score", choices=model.IMAGE_SCORES, default="sum",
         help="sum: the --score (the original); top1: mean of the top 1%% of the residual map; "
              "smoothmax: maximum of the residual map smoothed with sigma 2 (small defects)")
    test("--threshold", type=threshold_value, default="auto", help="a score, or auto")

    out = p.add_argument_group("outputs").add_argument
    out("--checkpoint_dir", default="checkpoint", help="where checkpoints live")
    out("--sample_dir", default="samples", help="where sample grids are written")
    out("--test_result_dir", default="test_result", help="results folder inside --test_dir")
    out("--log_dir", default="logs", help="TensorBoard event files")
    out("--save_every", type=int, default=500, help="steps between checkpoints")
    out("--sample_every", type=int, default=100, help="steps between sample grids")
    out("--generate_test_images", type=int, default=100,
        help="images in the --visualize_option 0 grid")
    out("--visualize_option", type=int, choices=range(5), default=0,
        help="0 samples, 1 per-dimension grids, 2-4 GIF sweeps")

    dist = p.add_argument_group("distribution").add_argument
    dist("--strategy", choices=("default", "mirrored", "multiworker"), default="default",
         help="tf.distribute strategy")
    dist("--devices", default=None, help="comma list of devices for --strategy mirrored")
    return p


def is_folder_name(name):
    """Whether ``name`` names one folder inside another: no path, not '.' or '..'."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


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


@dataclasses.dataclass(frozen=True)
class Job:
    """One command, resolved once from its flags (``resolve``) and handed to every job: the
    flags as parsed, the data they name, the model's checkpoint folder and the configurations
    they make (``model_config`` with three channels until the images tell)."""

    flags: argparse.Namespace
    data: inputs.DataSpec
    checkpoint_dir: Path
    model_config: model.ModelConfig
    train_config: model.TrainConfig
    search_config: model.SearchConfig


def resolve(args):
    """The ``Job`` of the parsed flags, with their derived defaults; UsageError for flags that
    contradict each other or are out of range.

    The configurations are built here, so that their own checks run before any work.
    """
    data = inputs.DataSpec.from_flags(args)
    y_dim = args.y_dim if args.y_dim is not None else (10 if data.is_mnist else 0)
    checks = [
        (not (args.train or args.train_encoder or args.anomaly_test or args.visualize
              or args.export),
         "nothing to do: pass --train, --train_encoder, --anomaly_test, --visualize, --export"),
        (args.normal_class is not None and not data.is_mnist,
         f"--normal_class applies to --dataset mnist only, not {args.dataset!r}"),
        (y_dim and not data.is_mnist,
         f"--y_dim needs labels, which only --dataset mnist has, not {args.dataset!r}"),
        (data.is_mnist and y_dim not in (0, 10), "--y_dim for mnist is 0 or 10"),
        (min(data.input_size) < 1, "--input_height/width must be positive"),
        (args.batch_size < 1 or args.test_batch_size < 1, "batch sizes must be positive"),
        (not args.train_size >= 1, "--train_size must be at least 1"),
        (args.test_size is not None and args.test_size < 1, "--test_size must be positive"),
        (args.generate_test_images < 1, "--generate_test_images must be positive"),
        (args.retries < 0, "--retries must be >= 0"),
        (args.seed < 0, "--seed must be >= 0"),
        (not is_folder_name(args.test_result_dir),
         f"--test_result_dir must be one folder name (no path), not {args.test_result_dir!r}"),
        (args.test_result_dir.lower() in inputs.NORMAL_FOLDERS,
         f"--test_result_dir {args.test_result_dir!r} is the name of the normal images' folder"),
    ]
    for failed, message in checks:
        if failed:
            raise UsageError(message)
    name = model_dir(args, data.output_size)
    try:
        job = Job(args, data, Path(args.checkpoint_dir) / name, model_config(args, data, y_dim),
                  train_config(args, Path(args.log_dir) / name), search_config(args))
    except ValueError as error:
        raise UsageError(str(error)) from None
    check_memory(job.model_config, max(args.batch_size, args.test_batch_size))
    return job


def check_memory(config, batch_size):
    """UsageError when the model cannot fit in this machine's memory (before building it)."""
    needed, available = config.training_bytes(batch_size), runtime.available_memory()
    if available is not None and needed > available:
        raise UsageError(
            f"a {config.output_height}x{config.output_width} model needs at least "
            f"{needed / 2 ** 30:.3g} GiB at batch {batch_size}, and {available / 2 ** 30:.3g} "
            "GiB are available: lower --output_height/--output_width, --gf_dim/--df_dim or "
            "the batch size")


def model_config(args, data, y_dim):
    classes = tuple(args.normal_class) if y_dim and args.normal_class else ()
    return model.ModelConfig(*data.output_size, 3, z_dim=args.z_dim, y_dim=y_dim,
                             gf_dim=args.gf_dim, df_dim=args.df_dim, classes=classes,
                             gan=args.gan)


def train_config(args, log_dir):
    """The training's configuration; Adam's defaults are the original's, or f-AnoGAN's for
    WGAN-GP."""
    wgan = args.gan == "wgan_gp"
    return model.TrainConfig(
        epochs=args.epoch,
        learning_rate=(args.learning_rate if args.learning_rate is not None
                       else 0.0001 if wgan else 0.0002),
        beta1=args.beta1 if args.beta1 is not None else (0.0 if wgan else 0.5),
        beta2=args.beta2 if args.beta2 is not None else (0.9 if wgan else 0.999),
        n_critic=args.n_critic, gp_weight=args.gp_weight,
        encoder_min_steps=args.encoder_min_steps, save_every=args.save_every,
        sample_every=args.sample_every, sample_dir=args.sample_dir, log_dir=str(log_dir),
        encoder_epochs=args.encoder_epoch, encoder_learning_rate=args.encoder_learning_rate,
        encoder_kappa=args.encoder_kappa)


def search_config(args):
    return model.SearchConfig(
        steps=args.test_epoch, learning_rate=args.test_learning_rate,
        beta1=args.beta1 if args.beta1 is not None else 0.5, ano_lambda=args.ano_lambda,
        dis_loss=args.dis_loss, restarts=args.test_restarts, clip_z=args.test_clip_z,
        z_init=args.z_init, score=args.score, kappa=args.encoder_kappa)


def model_dir(args, output_size):
    """The original's checkpoint sub-folder name, plus the normal digits when one-class."""
    dataset = args.dataset.replace("/", "_").replace("\\", "_")
    name = f"{dataset}_{args.batch_size}_{output_size[0]}_{output_size[1]}"
    if args.normal_class is not None:
        name += "_normal" + "".join(str(d) for d in args.normal_class)
    if args.gan != "dcgan":
        name += f"_{args.gan}"
    return name


def training_split(job):
    """The training images without the held-out slice, capped by --train_size, and the
    steps per epoch: (source, split, images used per epoch, steps per epoch)."""
    source, train, held_out = job.data.training_split()
    usable = int(min(len(train), job.flags.train_size))
    steps_per_epoch = usable // job.flags.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"{usable} training images are fewer than --batch_size "
                         f"{job.flags.batch_size}: lower --batch_size or add images")
    return source, train, held_out, usable, steps_per_epoch


def image_spec(job, dcgan):
    return job.data.image_spec(dcgan.config.value_range)


def training_dataset(job, dcgan, images, seed=None):
    """Shuffled training batches of ``images`` for ``dcgan`` (the last partial one dropped),
    shuffled by ``seed`` (default --seed)."""
    return inputs.make_dataset(images, image_spec(job, dcgan), job.flags.batch_size,
                               y_dim=dcgan.config.y_dim,
                               shuffle_seed=job.flags.seed if seed is None else seed,
                               drop_remainder=True)


def build_model(job, channels):
    """The DCGAN for these flags with ``channels``, restored from its checkpoint when one
    exists.

    A checkpoint saved without batch-norm statistics gets them re-estimated from the
    training images, with a warning.
    """
    flags = job.flags
    dcgan = model.DCGAN(dataclasses.replace(job.model_config, c_dim=channels),
                        job.checkpoint_dir, job.train_config,
                        strategy=runtime.make_strategy(flags.strategy, flags.devices))
    restored = dcgan.load()
    for line in dcgan.warnings:
        print(line, file=sys.stderr)
    if dcgan.statistics_missing:
        _, train, _, usable, _ = training_split(job)
        batches = 50
        dcgan.estimate_statistics(training_dataset(job, dcgan, train), flags.batch_size,
                                  batches, flags.seed)
        print(f"warning: {dcgan.manager.latest_checkpoint} was saved without batch-norm "
              f"statistics (an older version): re-estimated them on {batches} batches of the "
              f"{usable} training images; the next checkpoint saves them", file=sys.stderr)
    return dcgan, restored


def health_images(job, dcgan, train, held_out):
    """The real images of the health check (``health.RealImages``), or None for fewer than 4
    training images: up to 256 training images as queries, up to 1,000 others as references,
    and up to 64 held-out images (training images when none are held out)."""
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
    check_writable(flags.sample_dir, "--sample_dir")
    check_writable(job.train_config.log_dir, "--log_dir")
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
    print(f"checkpoint: {dcgan.manager.latest_checkpoint} (seed {dcgan.training_seed})")


def train_once(job, dcgan, resumed, train_images, held_out, usable, steps_per_epoch, seed):
    """Trains (or resumes) one GAN; returns its final health verdict (None without one)."""
    flags = job.flags
    reals = health_images(job, dcgan, train_images, held_out)
    with dcgan.exclusive():
        if resumed:
            seed = dcgan.training_seed if dcgan.training_seed is not None else seed
            print(f"resuming from step {dcgan.steps_done} in {dcgan.checkpoint_dir}")
        if dcgan.steps_done >= flags.epoch * steps_per_epoch:
            print(f"already trained {dcgan.steps_done} steps ({flags.epoch} epochs): raise "
                  "--epoch to train more")
            if dcgan.health["gan"] is None and reals is not None:
                dcgan.training_seed = seed if dcgan.training_seed is None else dcgan.training_seed
                dcgan.check_health(reals, "gan")
                dcgan.write_config()
        else:
            print(f"training on {usable} images of {flags.dataset}, {steps_per_epoch} steps per "
                  f"epoch, seed {seed}")
            dcgan.train(training_dataset(job, dcgan, train_images, seed), steps_per_epoch,
                        flags.batch_size, model.sample_inputs(dcgan.config, flags.batch_size, seed),
                        seed=seed, reals=reals)
    warn(dcgan.health["gan"], gan=dcgan.config.gan)
    return dcgan.health["gan"]


def train_encoder(job):
    source, train_images, held_out, usable, steps_per_epoch = training_split(job)
    check_writable(job.flags.sample_dir, "--sample_dir")
    check_writable(job.train_config.log_dir, "--log_dir")
    dcgan, restored = build_model(job, source.channels)
    if not restored:
        raise UsageError(f"no trained GAN in {dcgan.checkpoint_dir}: train it first (--train "
                         "with the same --dataset and sizes), then --train_encoder")
    epochs = job.train_config.encoder_epochs_for(steps_per_epoch)
    with dcgan.exclusive():
        trained_for = dcgan.encoder_trained_for
        if trained_for not in (None, dcgan.steps_done):
            print(f"the encoder was trained for G at step {trained_for}; G is now at step "
                  f"{dcgan.steps_done}: training it again")
        elif dcgan.encoder_steps_done >= epochs * steps_per_epoch:
            print(f"encoder already trained {dcgan.encoder_steps_done} steps ({epochs} epochs): "
                  "raise --encoder_epoch or --encoder_min_steps to train more")
            warn(dcgan.health["encoder"], "encoder")
            return
        elif dcgan.encoder_steps_done:
            print(f"resuming the encoder from step {dcgan.encoder_steps_done}")
        print(f"training the encoder on {usable} images of {job.flags.dataset}: {epochs} epochs "
              f"of {steps_per_epoch} steps")
        reals = health_images(job, dcgan, train_images, held_out)
        shown = held_out if len(held_out) else train_images
        samples = inputs.arrays(shown.subset(range(min(32, len(shown)))), image_spec(job, dcgan),
                                dcgan.config.y_dim)
        dcgan.train_encoder(training_dataset(job, dcgan, train_images), steps_per_epoch,
                            job.flags.batch_size, samples, reals)
    result = dcgan.health["encoder"]
    if result is not None:
        print("encoder health: " + health.summary_line(result))
    warn(result, "encoder")
    print(f"encoder checkpoint: {dcgan.encoder_manager.latest_checkpoint}")


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
    """Runs the latent search ``search`` over ``source``; feeds ``report`` or returns the
    scores."""
    flags = job.flags
    dataset = inputs.make_dataset(source, image_spec(job, dcgan), flags.test_batch_size,
                                  y_dim=dcgan.config.y_dim)
    batches = math.ceil(len(source) / flags.test_batch_size)
    scores = []
    for images, result in dcgan.score_batches(dataset, search, batches, flags.seed):
        maps = evaluation.anomaly_maps(images, result.final, dcgan.config.value_range)
        if flags.image_score != "sum":
            result.score = model.map_score(maps, flags.image_score).numpy()
        if report is not None:
            report.add(images, result, maps)
        scores.append(result.score)
    return np.concatenate(scores)


def choose_threshold(job, dcgan, report):
    """The manual threshold, or the 95th percentile of normal images' scores."""
    if job.flags.threshold != "auto":
        return job.flags.threshold, "manual"
    normal = report.normal_scores()
    normal = normal[np.isfinite(normal)]
    if len(normal):
        return float(np.percentile(normal, 95)), "normal_test_images"
    return held_out_threshold(job, dcgan, job.search_config)


def held_out_threshold(job, dcgan, search):
    """The 95th percentile of the held-out training images' scores under ``search``, and its
    source."""
    _, _, held_out = job.data.training_split()
    if not len(held_out):
        raise utils.DataError("no labelled normal test images and too few training images to "
                              "hold out: pass --threshold <score>")
    print(f"scoring {len(held_out)} held-out training images for the threshold")
    held = score_source(job, dcgan, held_out, search)
    return float(np.percentile(held[np.isfinite(held)], 95)), "heldout_train_images"


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
    if (result_dir.is_dir() and not inputs.is_result_folder(result_dir)
            and any(p.suffix.lower() in inputs.IMAGE_EXTENSIONS for p in result_dir.rglob("*"))):
        raise UsageError(f"--test_result_dir {job.flags.test_result_dir}: {result_dir} holds "
                         "test images, not results: choose another name")
    if dcgan.is_chief:
        score_and_report(job, dcgan, result_dir)
        return
    with tempfile.TemporaryDirectory() as scratch:  # other workers search but write nothing
        score_and_report(job, dcgan, Path(scratch))


def score_and_report(job, dcgan, result_dir):
    """Scores the test images and writes every output into ``result_dir``."""
    flags = job.flags
    source = job.data.test_source(dcgan.config.c_dim)
    warn(dcgan.health["gan"], gan=dcgan.config.gan)
    if flags.z_init == "encoder":
        warn(dcgan.health["encoder"], "encoder")
    report = evaluation.AnomalyReport(result_dir, source, dcgan.config.value_range,
                                      mask_spec=image_spec(job, dcgan))
    restarts = f" from {flags.test_restarts} starting points" if flags.test_restarts > 1 else ""
    start = "E(x)" if flags.z_init == "encoder" else "U(-1, 1)"
    print(f"scoring {len(source)} images from z = {start}, {flags.test_epoch} search steps "
          f"each{restarts}")
    started = time.perf_counter()
    score_source(job, dcgan, source, job.search_config, report)
    seconds = time.perf_counter() - started
    threshold, threshold_source = choose_threshold(job, dcgan, report)
    metrics = report.finish(threshold, threshold_source, {
        "seconds": round(seconds, 3), "images_per_second": round(len(source) / seconds, 3),
        "test_epoch": flags.test_epoch, "z_init": flags.z_init, "score": flags.score,
        "image_score": flags.image_score,
        "ano_lambda": flags.ano_lambda, "encoder_kappa": flags.encoder_kappa,
        "dis_loss": flags.dis_loss,
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
        f"{k} {metrics[k]}" for k in ("n", "n_anomalous", "roc_auc", "pr_auc", "threshold")))


def scoring_mode(search, image_score):
    """What makes scores comparable (a threshold belongs to it), under the names of the flags
    as metrics.json records them."""
    return {"z_init": search.z_init, "test_epoch": search.steps, "score": search.score,
            "image_score": image_score, "ano_lambda": search.ano_lambda,
            "encoder_kappa": search.kappa, "dis_loss": search.dis_loss}


def one_pass(search):
    """``search`` scoring in one pass from E(x), as the exported model does."""
    return dataclasses.replace(search, z_init="encoder", steps=0)


def export_threshold(job, dcgan, search):
    """The exported threshold and its source: --threshold, else the last anomaly test's when
    it scored as ``search`` does, else the held-out training images' 95th percentile."""
    if job.flags.threshold != "auto":
        return job.flags.threshold, "manual"
    path = job.data.result_folder() / "metrics.json"
    if path.exists():
        saved = json.loads(path.read_text())
        wanted = {**scoring_mode(search, job.flags.image_score), "gan_steps": dcgan.steps_done}
        if all(saved.get(key) == value for key, value in wanted.items()):
            return saved["threshold"], f"anomaly_test:{saved['threshold_source']}"
    return held_out_threshold(job, dcgan, search)


def export_model(job):
    """Writes the SavedModel of the trained GAN and encoder (--export)."""
    flags = job.flags
    dcgan = trained_model(job)
    check_encoder(dcgan, "--export")
    search = one_pass(job.search_config)
    threshold, source = export_threshold(job, dcgan, search)
    spec = image_spec(job, dcgan)
    info = {"model": dataclasses.asdict(dcgan.config), "health": dcgan.health,
            "training_seed": dcgan.training_seed, "gan_steps": dcgan.steps_done,
            "encoder_steps": dcgan.encoder_steps_done, "threshold": threshold,
            "threshold_source": source, "mode": scoring_mode(search, flags.image_score),
            "input": {"size": spec.input_size, "crop": spec.crop},
            "output_size": spec.output_size, "value_range": spec.value_range}
    folder = export.export_detector(dcgan, spec, search, flags.image_score, threshold, info,
                                    flags.export)
    print(f"exported to {folder}: threshold {threshold:.6g} ({source})")


def run(job):
    flags = job.flags
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


def main(argv=None):
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        run(resolve(args))
    except (UsageError, utils.DataError, model.CheckpointError, model.TrainingDiverged) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except model.TrainingInterrupted as error:
        print(f"error: {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted; earlier results and checkpoints are unchanged: run again",
              file=sys.stderr)
        return 130
    return 0


def interrupt(signum, frame):
    """Turns SIGTERM into KeyboardInterrupt outside training (which handles it itself)."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
