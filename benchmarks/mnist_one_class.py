"""One-class MNIST: detection quality and speed of the scoring modes, per normal digit.

    python benchmarks/mnist_one_class.py --data_dir ../shared/data --digits 0,7 --epochs 5
        [--encoder_epoch 10] [--test_size 1000] [--modes a,b,c,b_izif] [--work_dir out/mnist]
        [--y_dim 0]

For each digit: trains a one-class DCGAN (``main.py --normal_class <digit> --train``; the
original's class-conditional MNIST model, or with ``--y_dim 0`` the unconditional one) for
``--epochs`` epochs, trains its izi_f encoder (``--train_encoder``), then scores the same
``--test_size`` stratified MNIST test images with each mode:

- ``a``: the original search, z from U(-1, 1), ``--test_epoch`` steps (100);
- ``b``: the encoder alone, z = E(x), no search (``--test_epoch 0``; f-AnoGAN);
- ``c``: the search started at E(x) (``--c_learning_rate``, ``--test_epoch`` steps);
- ``b_izif`` / ``c_izif``: as b / c, scored (and searched) with f-AnoGAN's izi_f score.

Prints one JSON object per digit (each mode's ROC AUC, PR AUC, images/s) and a summary beside
the published AnoGAN row (Ruff et al., Deep SVDD, ICML 2018, Table 1). Checkpoints and results
are kept under ``--work_dir`` and reused: a later run with more digits, epochs or encoder epochs
trains only what is missing (a longer GAN training resumes from the longest shorter one); one
``--work_dir`` holds one kind of model (``--y_dim``).
Several ``--encoder_epoch`` values (e.g. 1,3,10) train the encoder in turn and score after each
(an encoder trained further before is not shortened: ``encoder_steps`` says what was scored).
"""

import argparse
import json
import shutil
from pathlib import Path

import common

import main as anogan

PUBLISHED_ANOGAN = {0: 0.966, 1: 0.992, 2: 0.850, 3: 0.887, 4: 0.894, 5: 0.883, 6: 0.947,
                    7: 0.935, 8: 0.849, 9: 0.924}
"""ROC AUC of AnoGAN per normal MNIST digit, Deep SVDD paper (ICML 2018), Table 1."""

MODES = {
    "a": {"z_init": "random", "search": True, "score": "anogan"},
    "b": {"z_init": "encoder", "search": False, "score": "anogan"},
    "c": {"z_init": "encoder", "search": True, "score": "anogan"},
    "b_izif": {"z_init": "encoder", "search": False, "score": "izif"},
    "c_izif": {"z_init": "encoder", "search": True, "score": "izif"},
}


def int_list(text):
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="data", help="folder holding mnist/")
    parser.add_argument("--digits", type=int_list, default=list(range(10)))
    parser.add_argument("--epochs", type=int, default=5, help="GAN training epochs")
    parser.add_argument("--encoder_epoch", type=int_list, default=None,
                        help="encoder epochs; several values train and score in turn "
                             "[main.py's default]")
    parser.add_argument("--encoder_learning_rate", type=float,
                        default=anogan.model.TrainConfig.encoder_learning_rate)
    parser.add_argument("--test_size", type=int, default=1000)
    parser.add_argument("--test_epoch", type=int, default=100, help="search steps of a and c")
    parser.add_argument("--c_learning_rate", type=float, default=0.001,
                        help="search learning rate of modes c (a keeps the original's 0.001)")
    parser.add_argument("--modes", default="a,b,c,b_izif")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--y_dim", type=int, default=10,
                        help="10: the original's conditional MNIST model; 0: unconditional")
    parser.add_argument("--work_dir", default="out/mnist_one_class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.modes = args.modes.split(",")
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {sorted(MODES)}")
    if args.encoder_epoch is None:
        args.encoder_epoch = [anogan.model.TrainConfig.encoder_epochs]
    return args


def checkpoint_root(args, epochs):
    return Path(args.work_dir) / f"checkpoint_e{epochs}"


def model_folder(args, digit, epochs):
    return checkpoint_root(args, epochs) / f"mnist_{args.batch_size}_28_28_normal{digit}"


def seed_from_shorter_training(args, digit):
    """Copies the GAN of the longest shorter training of ``digit`` (not its encoder), if any,
    so that this training resumes from it."""
    target = model_folder(args, digit, args.epochs)
    if (target / "checkpoint").exists():
        return
    shorter = sorted((int(p.name.split("_e")[1]), p) for p in Path(args.work_dir).glob(
        "checkpoint_e*") if int(p.name.split("_e")[1]) < args.epochs)
    for _, root in reversed(shorter):
        source = root / target.name
        if (source / "checkpoint").exists():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("encoder", ".lock"))
            return


def score(args, common_flags, digit, mode, encoder_epochs):
    """Runs one mode (or reuses its earlier result); returns its metrics."""
    spec = MODES[mode]
    tag = f"d{digit}_e{args.epochs}_n{args.test_size}_{mode}"
    if spec["z_init"] == "encoder":
        tag += f"_enc{encoder_epochs}_elr{args.encoder_learning_rate:g}"
    if spec["z_init"] == "encoder" and spec["search"]:
        tag += f"_lr{args.c_learning_rate:g}"
    result_dir = Path(args.work_dir) / "results" / tag
    if not (result_dir / "metrics.json").exists():
        common.run_main([*common_flags, "--anomaly_test", "--test_size", args.test_size,
                         "--test_dir", result_dir.parent, "--test_result_dir", tag,
                         "--z_init", spec["z_init"], "--score", spec["score"],
                         "--test_epoch", args.test_epoch if spec["search"] else 0,
                         "--test_learning_rate",
                         args.c_learning_rate if spec["z_init"] == "encoder" else 0.001])
    metrics = json.loads((result_dir / "metrics.json").read_text())
    return {key: metrics[key] for key in ("roc_auc", "pr_auc", "images_per_second", "seconds",
                                          "encoder_steps")}


def benchmark_digit(args, digit):
    common_flags = ["--dataset", "mnist", "--normal_class", digit, "--data_dir", args.data_dir,
                    "--checkpoint_dir", checkpoint_root(args, args.epochs), "--seed", args.seed,
                    "--batch_size", args.batch_size, "--y_dim", args.y_dim,
                    "--sample_dir", Path(args.work_dir) / "samples" / f"d{digit}_e{args.epochs}",
                    "--log_dir", Path(args.work_dir) / "logs" / f"e{args.epochs}"]
    seed_from_shorter_training(args, digit)
    row = {"digit": digit, "y_dim": args.y_dim, "gan_epochs": args.epochs,
           "test_size": args.test_size,
           "published_anogan_roc_auc": PUBLISHED_ANOGAN[digit],
           "train_seconds": common.run_main([*common_flags, "--epoch", args.epochs, "--train"])}
    if "a" in args.modes:
        row["a"] = score(args, common_flags, digit, "a", None)
    for epochs in sorted(args.encoder_epoch):
        flags = [*common_flags, "--epoch", args.epochs, "--encoder_epoch", epochs,
                 "--encoder_learning_rate", args.encoder_learning_rate]
        row[f"encoder_seconds_{epochs}"] = common.run_main([*flags, "--train_encoder"])
        for mode in args.modes:
            if mode != "a":
                row[f"{mode}@{epochs}" if len(args.encoder_epoch) > 1 else mode] = score(
                    args, flags, digit, mode, epochs)
    aucs = {k: v["roc_auc"] for k, v in row.items() if isinstance(v, dict)}
    row["best_mode"] = max(aucs, key=aucs.get)
    row["best_roc_auc"] = aucs[row["best_mode"]]
    return row


def summary(rows):
    """Mean ROC AUC per mode, the best mode's mean and the digits below the published row."""
    modes = [k for k, v in rows[0].items() if isinstance(v, dict)]
    mean = {mode: round(sum(r[mode]["roc_auc"] for r in rows) / len(rows), 4) for mode in modes}
    speed = {mode: round(sum(r[mode]["images_per_second"] for r in rows) / len(rows), 2)
             for mode in modes}
    figures = {"digits": [r["digit"] for r in rows], "mean_roc_auc": mean,
               "mean_images_per_second": speed,
               "mean_best_roc_auc": round(sum(r["best_roc_auc"] for r in rows) / len(rows), 4),
               "published_anogan_mean": round(
                   sum(r["published_anogan_roc_auc"] for r in rows) / len(rows), 4),
               "below_published": [r["digit"] for r in rows
                                   if r["best_roc_auc"] < r["published_anogan_roc_auc"]]}
    if "a" in speed and "b" in speed:
        figures["b_over_a_images_per_second"] = round(speed["b"] / speed["a"], 1)
    return figures


def main(argv=None):
    args = parse_args(argv)
    rows = []
    for digit in args.digits:
        rows.append(benchmark_digit(args, digit))
        common.print_json(rows[-1])
    common.print_json({"summary": summary(rows), **common.environment()})


if __name__ == "__main__":
    main()
