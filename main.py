"""AnoGAN in TensorFlow 2: train a DCGAN on normal images, then score unseen ones.

    python main.py --dataset mnist --input_height 28 --output_height 28 --normal_class 0 --train
    python main.py --dataset mnist --input_height 28 --output_height 28 --normal_class 0 \\
        --anomaly_test
"""

import argparse
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

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


def threshold_value(text):
    """'auto' or a number."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one stderr line and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser():
    """The original's flags (same names and defaults) and the port's new ones."""
    p = Parser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    flag = p.add_argument
    boolean = argparse.BooleanOptionalAction
    flag("--epoch", type=int, default=25, help="epochs to train")
    flag("--test_epoch", type=int, default=100, help="latent-search steps per test image")
    flag("--learning_rate", type=float, default=0.0002, help="Adam learning rate")
    flag("--beta1", type=float, default=0.5, help="Adam beta1")
    flag("--test_learning_rate", type=float, default=0.001, help="latent-search learning rate")
    flag("--test_restarts", type=int, default=1,
         help="starting z per test image, searched together; the lowest score is kept")
    flag("--test_clip_z", action=boolean, default=False,
         help="keep z in G's prior range [-1, 1] after every search step")
    flag("--train_size", type=float, default=math.inf, help="cap on training images per epoch")
    flag("--train", action=boolean, default=False, help="train the DCGAN")
    flag("--anomaly_test", action=boolean, default=False, help="score the test images")
    flag("--visualize", action=boolean, default=False, help="write visualisations of G")
    flag("--batch_size", type=int, default=64, help="training batch size")
    flag("--test_batch_size", type=int, default=64, help="test images searched together")
    flag("--input_height", type=int, default=108, help="crop height (with --crop)")
    flag("--input_width", type=int, default=None, help="crop width [input_height]")
    flag("--output_height", type=int, default=64, help="image height the model works at")
    flag("--output_width", type=int, default=None, help="image width [output_height]")
    flag("--dataset", default="celebA", help="mnist, or a folder name under --data_dir")
    flag("--input_fname_pattern", default="*.jpg", help="glob of the image files")
    flag("--checkpoint_dir", default="checkpoint", help="where checkpoints live")
    flag("--sample_dir", default="samples", help="where sample grids are written")
    flag("--test_dir", default="test_data", help="images to score (subfolders give labels)")
    flag("--test_result_dir", default="test_result", help="results folder inside --test_dir")
    flag("--crop", action=boolean, default=False, help="centre-crop input_height x input_width")
    flag("--generate_test_images", type=int, default=100,
         help="images in the --visualize_option 0 grid")
    flag("--z_dim", type=int, default=100, help="latent size")
    flag("--gf_dim", type=int, default=64, help="filters of G's last deconv (doubling inwards)")
    flag("--df_dim", type=int, default=64, help="filters of D's first conv (doubling inwards)")
    flag("--y_dim", type=int, default=None,
         help="label size of a class-conditional DCGAN [10 for mnist without --normal_class]")
    flag("--normal_class", type=digits_list, default=None,
         help="MNIST digits that are normal, e.g. 0 or 1,7 (one-class training)")
    flag("--test_size", type=int, default=None, help="cap on the number of test images")
    flag("--ano_lambda", type=float, default=0.1, help="lambda of the anomaly score")
    flag("--dis_loss", choices=("feature", "gan"), default="feature",
         help="discrimination loss of the anomaly score")
    flag("--threshold", type=threshold_value, default="auto", help="a score, or auto")
    flag("--seed", type=int, default=0, help="seed of numpy and TensorFlow")
    flag("--log_dir", default="logs", help="TensorBoard event files")
    flag("--data_dir", default="data", help="where datasets live")
    flag("--save_every", type=int, default=500, help="steps between checkpoints")
    flag("--sample_every", type=int, default=100, help="steps between sample grids")
    flag("--visualize_option", type=int, choices=range(5), default=0,
         help="0 samples, 1 per-dimension grids, 2-4 GIF sweeps")
    flag("--strategy", choices=("default", "mirrored", "multiworker"), default="default",
         help="tf.distribute strategy")
    flag("--devices", default=None, help="comma list of devices for --strategy mirrored")
    return p


def resolve(args):
    """Fills derived defaults and rejects contradictory flags (raises UsageError)."""
    args.input_width = args.input_width or args.input_height
    args.output_width = args.output_width or args.output_height
    is_mnist = args.dataset.lower() == "mnist"
    if args.y_dim is None:
        args.y_dim = 10 if is_mnist and args.normal_class is None else 0
    checks = [
        (not (args.train or args.anomaly_test or args.visualize),
         "nothing to do: pass --train, --anomaly_test or --visualize"),
        (args.normal_class is not None and not is_mnist,
         f"--normal_class applies to --dataset mnist only, not {args.dataset!r}"),
        (args.y_dim and not is_mnist,
         f"--y_dim needs labels, which only --dataset mnist has, not {args.dataset!r}"),
        (args.y_dim and args.normal_class is not None,
         "--normal_class trains an unconditional model: leave --y_dim at 0"),
        (is_mnist and args.y_dim not in (0, 10), "--y_dim for mnist is 0 or 10"),
        (min(args.output_height, args.output_width) < 8, "--output_height/width must be >= 8"),
        (min(args.input_height, args.input_width) < 1, "--input_height/width must be positive"),
        (args.epoch < 1, "--epoch must be positive"),
        (args.test_epoch < 1, "--test_epoch must be positive"),
        (args.test_restarts < 1, "--test_restarts must be positive"),
        (args.batch_size < 1 or args.test_batch_size < 1, "batch sizes must be positive"),
        (not args.train_size >= 1, "--train_size must be at least 1"),
        (args.test_size is not None and args.test_size < 1, "--test_size must be positive"),
        (not 0.0 <= args.ano_lambda <= 1.0, "--ano_lambda must be in [0, 1]"),
        (args.learning_rate <= 0 or args.test_learning_rate <= 0, "learning rates must be > 0"),
        (not 0.0 <= args.beta1 < 1.0, "--beta1 must be in [0, 1)"),
        (min(args.z_dim, args.gf_dim, args.df_dim) < 1, "--z_dim/--gf_dim/--df_dim must be > 0"),
        (args.save_every < 1 or args.sample_every < 1, "--save_every/--sample_every must be > 0"),
        (args.generate_test_images < 1, "--generate_test_images must be positive"),
    ]
    for failed, message in checks:
        if failed:
            raise UsageError(message)
    return args


def model_dir(args):
    """The original's checkpoint sub-folder name, plus the normal digits when one-class."""
    name = f"{args.dataset}_{args.batch_size}_{args.output_height}_{args.output_width}"
    if args.normal_class is not None:
        name += "_normal" + "".join(str(d) for d in args.normal_class)
    return name


def training_source(args, check=True):
    """The training images: MNIST's train split (of the normal digits) or a folder.

    Without ``check`` a folder's images are listed but not decoded (enough for c_dim).
    """
    if args.dataset.lower() == "mnist":
        return utils.mnist_source(Path(args.data_dir) / "mnist", "train", args.normal_class)
    folder = Path(args.data_dir) / args.dataset
    if not folder.is_dir():
        raise utils.DataError(f"dataset folder {folder} not found: put images there or run "
                              f"`python download.py {args.dataset}`")
    return utils.folder_source(folder, args.input_fname_pattern, crop_size(args), check)


def crop_size(args):
    """The (h, w) every image must at least have: the crop, with --crop."""
    return (args.input_height, args.input_width) if args.crop else None


def image_spec(args, y_dim):
    return utils.ImageSpec(
        input_size=(args.input_height, args.input_width),
        output_size=(args.output_height, args.output_width), crop=args.crop,
        value_range=(0.0, 1.0) if y_dim else (-1.0, 1.0))


def build_model(args, channels):
    """The DCGAN for these flags, restored from its checkpoint when one exists."""
    config = model.ModelConfig(args.output_height, args.output_width, channels,
                               z_dim=args.z_dim, y_dim=args.y_dim, gf_dim=args.gf_dim,
                               df_dim=args.df_dim)
    train_config = model.TrainConfig(
        epochs=args.epoch, learning_rate=args.learning_rate, beta1=args.beta1,
        save_every=args.save_every, sample_every=args.sample_every, sample_dir=args.sample_dir,
        log_dir=str(Path(args.log_dir) / model_dir(args)))
    dcgan = model.DCGAN(config, Path(args.checkpoint_dir) / model_dir(args), train_config,
                        strategy=model.make_strategy(args.strategy, args.devices))
    return dcgan, dcgan.load()


def train(args):
    source = training_source(args)
    train, _ = utils.split_holdout(source, args.seed)
    usable = int(min(len(train), args.train_size))
    steps_per_epoch = usable // args.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"{usable} training images are fewer than --batch_size "
                         f"{args.batch_size}: lower --batch_size or add images")
    dcgan, resumed = build_model(args, source.channels)
    if resumed:
        print(f"resuming from step {dcgan.steps_done} in {dcgan.checkpoint_dir}")
    if dcgan.steps_done >= args.epoch * steps_per_epoch:
        print(f"already trained {dcgan.steps_done} steps ({args.epoch} epochs): raise --epoch "
              "to train more")
        return
    dataset = utils.make_dataset(train, image_spec(args, args.y_dim), args.batch_size,
                                 y_dim=args.y_dim, shuffle_seed=args.seed, drop_remainder=True)
    print(f"training on {usable} images of {args.dataset}, {steps_per_epoch} steps per epoch")
    dcgan.train(dataset, steps_per_epoch, args.batch_size,
                model.sample_inputs(dcgan.config, args.batch_size, args.seed), seed=args.seed)
    print(f"checkpoint: {dcgan.manager.latest_checkpoint}")


def trained_model(args):
    """A restored DCGAN, or UsageError telling to train first."""
    dcgan, restored = build_model(args, training_source(args, check=False).channels)
    if not restored:
        raise UsageError(f"no checkpoint in {dcgan.checkpoint_dir}: train a model first "
                         "(python main.py --train with the same --dataset and sizes)")
    return dcgan


def visualize(args):
    dcgan = trained_model(args)
    count = args.generate_test_images if args.visualize_option == 0 else args.batch_size
    paths = dcgan.visualize(args.visualize_option, args.sample_dir, count, args.seed)
    print(f"wrote {len(paths)} file(s) to {args.sample_dir}")


def test_source(args, channels):
    """The images to score: --test_dir when it holds any, else MNIST's test split."""
    result_dir = Path(args.test_dir) / args.test_result_dir
    if Path(args.test_dir).exists() and not Path(args.test_dir).is_dir():
        raise utils.DataError(f"--test_dir {args.test_dir} is not a folder")
    if Path(args.test_dir).is_dir():
        source = utils.test_folder_source(args.test_dir, result_dir, channels, crop_size(args))
        if len(source):
            return source
    if args.dataset.lower() == "mnist":
        return utils.mnist_test_source(Path(args.data_dir) / "mnist", args.normal_class)
    raise utils.DataError(f"no test images in {args.test_dir}: put images there (normal/ and "
                          "anomaly/ subfolders give labels)")


def search_config(args):
    return model.SearchConfig(steps=args.test_epoch, learning_rate=args.test_learning_rate,
                              beta1=args.beta1, ano_lambda=args.ano_lambda,
                              dis_loss=args.dis_loss, restarts=args.test_restarts,
                              clip_z=args.test_clip_z)


def score_source(dcgan, source, args, report=None):
    """Runs the latent search over ``source``; feeds ``report`` or returns the scores."""
    dataset = utils.make_dataset(source, image_spec(args, dcgan.config.y_dim),
                                 args.test_batch_size, y_dim=dcgan.config.y_dim)
    batches = math.ceil(len(source) / args.test_batch_size)
    scores = []
    for images, result in dcgan.anomaly_test(dataset, search_config(args), batches, args.seed):
        if report is not None:
            report.add(images, result)
        scores.append(result.score)
    return np.concatenate(scores)


def choose_threshold(args, dcgan, report):
    """The manual threshold, or the 95th percentile of normal images' scores."""
    if args.threshold != "auto":
        return args.threshold, "manual"
    normal = report.normal_scores()
    normal = normal[np.isfinite(normal)]
    if len(normal):
        return float(np.percentile(normal, 95)), "normal_test_images"
    _, held_out = utils.split_holdout(training_source(args), args.seed)
    if not len(held_out):
        raise utils.DataError("no labelled normal test images and too few training images to "
                              "hold out: pass --threshold <score>")
    print(f"scoring {len(held_out)} held-out training images for the threshold")
    held = score_source(dcgan, held_out, args)
    return float(np.percentile(held[np.isfinite(held)], 95)), "heldout_train_images"


def anomaly_test(args):
    dcgan = trained_model(args)
    if dcgan.is_chief:
        score_and_report(args, dcgan, Path(args.test_dir) / args.test_result_dir)
        return
    with tempfile.TemporaryDirectory() as scratch:  # other workers search but write nothing
        score_and_report(args, dcgan, Path(scratch))


def score_and_report(args, dcgan, result_dir):
    """Scores the test images and writes every output into ``result_dir``."""
    source = utils.limit_source(test_source(args, dcgan.config.c_dim), args.test_size,
                                args.seed)
    report = utils.AnomalyReport(result_dir, source, dcgan.config.value_range)
    restarts = f" from {args.test_restarts} starting points" if args.test_restarts > 1 else ""
    print(f"scoring {len(source)} images, {args.test_epoch} search steps each{restarts}")
    started = time.perf_counter()
    score_source(dcgan, source, args, report)
    seconds = time.perf_counter() - started
    threshold, threshold_source = choose_threshold(args, dcgan, report)
    metrics = report.finish(threshold, threshold_source, {
        "seconds": round(seconds, 3), "images_per_second": round(len(source) / seconds, 3),
        "test_epoch": args.test_epoch, "ano_lambda": args.ano_lambda,
        "test_learning_rate": args.test_learning_rate, "test_restarts": args.test_restarts,
        "test_clip_z": args.test_clip_z})
    for name in metrics["non_finite"]:
        print(f"warning: {name}: anomaly score is not finite", file=sys.stderr)
    print(f"results in {result_dir}: " + ", ".join(
        f"{k} {metrics[k]}" for k in ("n", "n_anomalous", "roc_auc", "pr_auc", "threshold")))


def run(args):
    keras.utils.set_random_seed(args.seed)
    if args.train:
        train(args)
    if args.anomaly_test:
        anomaly_test(args)
    if args.visualize:
        visualize(args)


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
        print("error: interrupted; finished files are complete, scores.csv is written only at "
              "the end: run again", file=sys.stderr)
        return 130
    return 0


def interrupt(signum, frame):
    """Turns SIGTERM into KeyboardInterrupt outside training (which handles it itself)."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
