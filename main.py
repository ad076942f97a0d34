"""AnoGAN in TensorFlow 2: train a DCGAN on normal images, then score unseen ones.

    python main.py --dataset mnist --normal_class 0 --train --anomaly_test
    python main.py --dataset mnist --normal_class 0 --train_encoder --anomaly_test \\
        --z_init encoder --test_epoch 0

The command line: the flags, their checks and the ``jobs.Job`` they resolve to (the data as an
``inputs.DataSpec``, the configurations), handed once to jobs.py, which runs the jobs; the exit
codes (2: bad flags or data, 130: interrupted).
"""

import argparse
import math
import signal
import sys
from pathlib import Path

import runtime

runtime.import_tensorflow()  # before anything imports it: its start-up notices held back

import config
import inputs
import jobs
import losses
import training
import utils


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
    data("--patch_size", type=int, default=0,
         help="patch mode: train on random PxP patches of the images at their own resolution "
              "(an epoch is as many patches as cover the training images' area once) and "
              "score every patch of a test image, stitching one map at its resolution; the "
              "model works at P (0: whole images resized to --output_height, the original)")
    data("--patch_stride", type=int, default=None,
         help="pixels between the patches a test image is tiled into [patch_size / 2]")
    data("--image_scale", type=finite_float, default=1.0,
         help="patch mode: scale the images by this first (0.25 for MVTec AD's 1024x1024)")
    data("--mirror", action="append", default=[], metavar="URL",
         help="MNIST mirror tried before download.py's own when the files are missing")

    net = p.add_argument_group("model").add_argument
    net("--z_dim", type=int, default=100, help="latent size")
    net("--gf_dim", type=int, default=64, help="filters of G's last deconv (doubling inwards)")
    net("--df_dim", type=int, default=64, help="filters of D's first conv (doubling inwards)")
    net("--gan", choices=config.GANS, default="dcgan",
        help="dcgan: the original's losses and schedule; wgan_gp: f-AnoGAN's WGAN-GP (layer "
             "norm in the critic)")
    net("--y_dim", type=int, default=None,
        help="label size of the original's class-conditional MNIST DCGAN; 0 for the "
             "unconditional one [10 for mnist, else 0]")

    fit = p.add_argument_group("training").add_argument
    fit("--epoch", type=int, default=25, help="epochs to train (at least --min_steps steps)")
    fit("--min_steps", type=int, default=config.TrainConfig.min_steps,
        help="fewest GAN training steps, whatever the folder's size (0: --epoch alone)")
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
    fit("--encoder_min_steps", type=int, default=config.TrainConfig.encoder_min_steps,
        help="fewest encoder training steps, whatever the folder's size")
    fit("--encoder_max_steps", type=int, default=config.TrainConfig.encoder_max_steps,
        help="most encoder training steps")
    fit("--encoder_patience", type=int, default=config.TrainConfig.encoder_patience,
        help="the encoder stops once this many checks in a row have not lowered its residual "
             "on held-out normal images by 1%%; 0: a fixed length (--encoder_epoch)")
    fit("--encoder_check_every", type=int, default=config.TrainConfig.encoder_check_every,
        help="encoder steps between checks of its held-out residual")
    fit("--encoder_epoch", type=int, default=config.TrainConfig.encoder_epochs,
        help="with --encoder_patience 0: epochs to train the encoder (at least "
             "--encoder_min_steps steps)")
    fit("--encoder_learning_rate", type=finite_float,
        default=config.TrainConfig.encoder_learning_rate, help="Adam learning rate of E")
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
    test("--z_init", choices=config.Z_INITS, default="random",
         help="where the search starts: U(-1, 1) (the original) or E(x) (f-AnoGAN)")
    test("--test_epoch", type=int, default=100,
         help="latent-search steps per test image (0: score the starting z)")
    test("--test_learning_rate", type=finite_float, default=0.001,
         help="latent-search learning rate")
    test("--test_restarts", type=int, default=1,
         help="starting z per test image, searched together; the lowest score is kept")
    test("--test_clip_z", action=boolean, default=False,
         help="keep z in G's prior range [-1, 1] after every search step")
    test("--score", choices=config.SCORES, default="anogan",
         help="anogan: (1 - lambda) R + lambda D, sums of |.| (the original); izif: f-AnoGAN's "
              "mean squares, R + kappa D")
    test("--ano_lambda", type=finite_float, default=0.1, help="lambda of the anogan score")
    test("--dis_loss", choices=config.DIS_LOSSES, default="feature",
         help="discrimination loss of the anogan score")
    test("--residual_shift", type=int, default=0,
         help="pixels of misregistration the residual map forgives: each pixel's |x - G(z)| is "
              "the smallest over G(z) moved by up to this many pixels (pixel metrics, map "
              "scores, figures; textures whose G draws their lines a little off)")
    test("--residual_map", choices=losses.RESIDUAL_MAPS, default="l1",
         help="the anomaly map: l1, |x - G(z)| (the original); ssim, 1 - local SSIM (11x11); "
              "gms, 1 - multi-scale gradient-magnitude similarity (edges and texture); used by "
              "the pixel metrics, map scores and overview")
    test("--map_sigma", type=finite_float, default=0.0,
         help="Gaussian smoothing of the anomaly map in pixels, before the pixel metrics and "
              "map scores (0: none; 4 is anomalib's)")
    test("--image_score", choices=losses.IMAGE_SCORES, default="sum",
         help="sum: the --score (the original; in patch mode the map's mean); top1: mean of the "
              "top 1%% of the anomaly map; smoothmax: maximum of the map smoothed with sigma 2 "
              "(small defects); critic: -D(x), how unlike the training images D finds the "
              "image itself (patch mode: its most unlike patch; the maps stay residuals)")
    test("--threshold", type=threshold_value, default="auto", help="a score, or auto")

    out = p.add_argument_group("outputs").add_argument
    out("--checkpoint_dir", default="checkpoint", help="where checkpoints live")
    out("--no_figures", action="store_true",
        help="skip the anomaly test's figures (histogram, ROC, t-SNE, overview): scores, "
             "metrics and per-image outputs only")
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


def resolve(args):
    """The ``jobs.Job`` of the parsed flags, with their derived defaults; UsageError for flags
    that contradict each other or are out of range.

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
        (args.patch_size < 0 or 0 < args.patch_size < 8,
         "--patch_size must be 0 (whole images) or at least 8 pixels"),
        (args.patch_stride is not None and not args.patch_size,
         "--patch_stride needs --patch_size"),
        (args.patch_size and args.patch_stride is not None
         and not 1 <= args.patch_stride <= args.patch_size,
         f"--patch_stride must be in [1, {args.patch_size}] (--patch_size), not "
         + str(args.patch_stride)),
        (not 0.0 < args.image_scale <= 1.0, "--image_scale must be in (0, 1]"),
        (args.image_scale != 1.0 and not args.patch_size, "--image_scale needs --patch_size"),
        (args.patch_size and data.is_mnist,
         "--patch_size is for folders of large images, not mnist"),
        (args.patch_size and args.crop, "--patch_size scores whole images: drop --crop"),
        (args.patch_size and (args.output_height or args.output_width),
         "--patch_size sets the model's size: drop --output_height/--output_width"),
        (not is_folder_name(args.test_result_dir),
         f"--test_result_dir must be one folder name (no path), not {args.test_result_dir!r}"),
        (args.test_result_dir.lower() in inputs.NORMAL_FOLDERS,
         f"--test_result_dir {args.test_result_dir!r} is the name of the normal images' folder"),
    ]
    for failed, message in [*checks, *width_checks(args), *path_checks(args)]:
        if failed:
            raise jobs.UsageError(message)
    check_devices(args)
    name = model_dir(args, data.output_size)
    try:
        job = jobs.Job(args, data, Path(args.checkpoint_dir) / name,
                       model_config(args, data, y_dim),
                       train_config(args, Path(args.log_dir) / name), search_config(args))
        job.search_config.check_map_size(*data.output_size)
    except ValueError as error:
        raise jobs.UsageError(str(error)) from None
    check_memory(job.model_config, max(args.batch_size, args.test_batch_size * args.test_restarts,
                                       args.generate_test_images))
    return job


INT32_MAX = 2 ** 31 - 1
SEED_MAX = 2 ** 32 - 1  # numpy's seeds


def width_checks(args):
    """(failed, message) for integer flags past what the code's counters hold: seeds past
    numpy's 32 bits, every other count past TensorFlow's int32 loop counters."""
    for name, value in sorted(vars(args).items()):
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        limit = SEED_MAX if name == "seed" else INT32_MAX
        yield value > limit, f"--{name} {value} is too large: at most {limit}"


def path_checks(args):
    """(failed, message) for path flags that name the wrong kind of thing."""
    writes = args.train or args.train_encoder
    for flag, value in (("--checkpoint_dir", args.checkpoint_dir), ("--log_dir", args.log_dir),
                        ("--sample_dir", args.sample_dir), ("--data_dir", args.data_dir)):
        yield (Path(value).exists() and not Path(value).is_dir(),
               f"{flag} {value} is a file, not a folder")
    yield (args.mask_dir is not None and Path(args.mask_dir).exists()
           and not Path(args.mask_dir).is_dir(), f"--mask_dir {args.mask_dir} is not a folder")
    yield (not args.dataset.strip() or args.dataset.strip() in (".", ".."),
           f"--dataset must name mnist or a folder under --data_dir, not {args.dataset!r}")
    yield (args.input_fname_pattern is not None and not args.input_fname_pattern.strip(),
           "--input_fname_pattern must be a file pattern such as '*.png'")
    if writes:
        for flag, value in (("--checkpoint_dir", args.checkpoint_dir),
                            ("--log_dir", args.log_dir), ("--sample_dir", args.sample_dir)):
            try:
                jobs.check_writable(value, flag)
            except jobs.UsageError as error:
                yield True, str(error)


def check_devices(args):
    """UsageError for --devices without --strategy mirrored, or naming devices this machine
    does not have."""
    if args.devices is None:
        return
    if args.strategy != "mirrored":
        raise jobs.UsageError("--devices needs --strategy mirrored")
    unknown, known = runtime.unknown_devices(args.devices)
    if unknown:
        raise jobs.UsageError(f"--devices {','.join(unknown)}: no such device here; this "
                              f"machine has {', '.join(known)}")


def check_memory(shapes, batch_size):
    """UsageError when the model of ``shapes`` (a ``config.ModelConfig``) cannot fit in this
    machine's memory (before building it)."""
    needed, available = shapes.training_bytes(batch_size), runtime.available_memory()
    if available is not None and needed > available:
        raise jobs.UsageError(
            f"a {shapes.output_height}x{shapes.output_width} model needs at least "
            f"{needed / 2 ** 30:.3g} GiB at batch {batch_size}, and {available / 2 ** 30:.3g} "
            "GiB are available: lower --output_height/--output_width, --gf_dim/--df_dim or "
            "the batch size")


def model_config(args, data, y_dim):
    classes = tuple(args.normal_class) if y_dim and args.normal_class else ()
    return config.ModelConfig(*data.output_size, 3, z_dim=args.z_dim, y_dim=y_dim,
                              gf_dim=args.gf_dim, df_dim=args.df_dim, classes=classes,
                              gan=args.gan, patch_size=data.patch_size,
                              image_scale=data.image_scale)


def train_config(args, log_dir):
    """The training's configuration; Adam's settings left unset take the GAN's defaults."""
    return config.TrainConfig(
        epochs=args.epoch, min_steps=args.min_steps, gan=args.gan,
        learning_rate=args.learning_rate, beta1=args.beta1, beta2=args.beta2,
        n_critic=args.n_critic, gp_weight=args.gp_weight,
        encoder_min_steps=args.encoder_min_steps, encoder_max_steps=args.encoder_max_steps,
        encoder_patience=args.encoder_patience,
        encoder_check_every=args.encoder_check_every, save_every=args.save_every,
        sample_every=args.sample_every, sample_dir=args.sample_dir, log_dir=str(log_dir),
        encoder_epochs=args.encoder_epoch, encoder_learning_rate=args.encoder_learning_rate,
        encoder_kappa=args.encoder_kappa)


def search_config(args):
    return config.SearchConfig(
        steps=args.test_epoch, learning_rate=args.test_learning_rate,
        beta1=args.beta1 if args.beta1 is not None else 0.5, ano_lambda=args.ano_lambda,
        dis_loss=args.dis_loss, restarts=args.test_restarts, clip_z=args.test_clip_z,
        z_init=args.z_init, score=args.score, kappa=args.encoder_kappa,
        residual_shift=args.residual_shift, residual_map=args.residual_map,
        map_sigma=args.map_sigma)


def model_dir(args, output_size):
    """The original's checkpoint sub-folder name, plus the normal digits when one-class."""
    dataset = args.dataset.replace("/", "_").replace("\\", "_")
    name = f"{dataset}_{args.batch_size}_{output_size[0]}_{output_size[1]}"
    if args.normal_class is not None:
        name += "_normal" + "".join(str(d) for d in args.normal_class)
    if args.gan != "dcgan":
        name += f"_{args.gan}"
    return name


def main(argv=None):
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        jobs.run(resolve(args))
    except (jobs.UsageError, utils.DataError, runtime.CheckpointError, runtime.FolderInUse,
            training.TrainingDiverged) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except training.TrainingInterrupted as error:
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
