"""One-class MNIST: detection quality of the scoring modes per normal digit and seed.

    python benchmarks/mnist_one_class.py --data_dir ../shared/data --digits 0,7 --seeds 0,1,2
        [--epochs 5] [--gan dcgan|wgan_gp] [--encoder_min_steps N] [--modes b_izif]
        [--encoder_patience N] [--test_size 1000] [--retries 1] [--work_dir out/mnist_one_class]

For each digit and seed: trains a one-class GAN (``main.py --normal_class <digit> --seed <s>
--train``; the original's class-conditional MNIST model) for ``--epochs`` epochs with its
health check (and ``--retries``), trains its izi_f encoder (``--train_encoder``), then scores
the same ``--test_size`` stratified MNIST test images with each mode:

- ``b_izif`` (the declared mode, the README's recommendation): z = E(x), no search,
  f-AnoGAN's izi_f score (``--z_init encoder --test_epoch 0 --score izif``);
- ``a``: the original search, z from U(-1, 1), ``--test_epoch`` steps (100);
- ``b``: z = E(x), no search, the original's score;
- ``c`` / ``c_izif``: the search started at E(x), scored with the original's / izi_f's score.

Every run is kept: one JSON object per (digit, seed) with each mode's ROC AUC, PR AUC and
images/s, the encoder's steps (and, under its stopping rule, why it stopped), the health
check's values and verdict, the seed training kept (after a retry), the seconds of a
training epoch (from its logged steps) and the command, commit, date and machine; then a
summary: per digit and mode the mean and standard deviation over seeds, the mean over all
runs, the published AnoGAN rows beside them, the health verdicts, and the runs below 0.80
the check passed. Runs are stored under ``--work_dir`` (checkpoints, results,
``runs/*.json``) and reused, so the table can grow across
several invocations; a longer GAN training resumes from the longest shorter one. The records
(``--records``, in this repository by default) are enough to reprint the table.
"""

import argparse
import itertools
import json
import shutil
import statistics
from pathlib import Path

import common
import numpy as np
import tensorflow as tf

import health
import main as anogan

PUBLISHED_ANOGAN = {
    "deep_svdd": {0: 0.966, 1: 0.992, 2: 0.850, 3: 0.887, 4: 0.894, 5: 0.883, 6: 0.947,
                  7: 0.935, 8: 0.849, 9: 0.924},
    "cheng_2020": {0: 0.990, 1: 0.998, 2: 0.888, 3: 0.913, 4: 0.944, 5: 0.912, 6: 0.925,
                   7: 0.964, 8: 0.883, 9: 0.958},
}
"""ROC AUC of AnoGAN per normal MNIST digit as quoted by Ruff et al. (Deep SVDD, ICML 2018,
Table 1) and by Cheng et al. (2020)."""

OCGAN_MEAN = 0.975
"""OCGAN's mean ROC AUC over the ten digits (Perera et al., CVPR 2019)."""

DECLARED_MODE = "b_izif"

MODES = {
    "a": {"z_init": "random", "search": True, "score": "anogan"},
    "b": {"z_init": "encoder", "search": False, "score": "anogan"},
    "c": {"z_init": "encoder", "search": True, "score": "anogan"},
    "b_izif": {"z_init": "encoder", "search": False, "score": "izif"},
    "c_izif": {"z_init": "encoder", "search": True, "score": "izif"},
}

LOW_AUC = 0.80
"""A run below this ROC AUC counts as failed; the health check should have flagged it."""


def int_list(text):
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="data", help="folder holding mnist/")
    parser.add_argument("--digits", type=int_list, default=list(range(10)))
    parser.add_argument("--seeds", type=int_list, default=[0])
    parser.add_argument("--epochs", type=int, default=5, help="GAN training epochs")
    parser.add_argument("--gan", choices=anogan.config.GANS, default="dcgan")
    parser.add_argument("--encoder_min_steps", type=int, default=None,
                        help="the encoder's least steps [main.py's default]; a set value names "
                             "its own runs and records")
    parser.add_argument("--encoder_patience", type=int, default=None,
                        help="E's stopping rule [main.py's default]; 0: E's length fixed. Runs "
                             "under the rule are named _rule")
    parser.add_argument("--retries", type=int, default=None, help="[main.py's default]")
    parser.add_argument("--test_size", type=int, default=1000)
    parser.add_argument("--test_epoch", type=int, default=100, help="search steps of a and c")
    parser.add_argument("--modes", default=DECLARED_MODE)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--work_dir", default="out/mnist_one_class")
    parser.add_argument("--records", default=str(Path(__file__).parent / "results" /
                                                 "mnist_one_class"),
                        help="where each run's JSON record is kept (committed: the table grows "
                             "across machines)")
    parser.add_argument("--extra", default="",
                        help="further main.py flags for training and scoring, space-separated")
    args = parser.parse_args(argv)
    args.modes = args.modes.split(",")
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {sorted(MODES)}")
    return args


def run_name(args, epochs=None):
    """``e<epochs>``, with ``_E<steps>`` when the encoder's least steps are set and ``_rule``
    when its stopping rule is on (``--encoder_patience`` not 0)."""
    name = f"e{epochs or args.epochs}"
    if args.encoder_min_steps is not None:
        name += f"_E{args.encoder_min_steps}"
    if args.encoder_patience != 0:
        name += "_rule"
    return name


def run_root(args, seed, epochs=None):
    return Path(args.work_dir) / args.gan / f"{run_name(args, epochs)}_seed{seed}"


def model_folder(args, digit, seed, epochs=None):
    name = f"mnist_{args.batch_size}_28_28_normal{digit}"
    if args.gan != "dcgan":
        name += f"_{args.gan}"
    return run_root(args, seed, epochs) / "checkpoint" / name


def seed_from_shorter_training(args, digit, seed):
    """Copies the GAN of the longest shorter training of (``digit``, ``seed``), if any, so
    that this training resumes from it (its encoder is not copied)."""
    target = model_folder(args, digit, seed)
    if (target / "checkpoint").exists():
        return
    shorter = sorted(int(p.name[1:].split("_")[0]) for p in
                     (Path(args.work_dir) / args.gan).glob(f"e*_seed{seed}"))
    for epochs in reversed([e for e in shorter if e < args.epochs]):
        source = model_folder(args, digit, seed, epochs)
        if (source / "checkpoint").exists():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("encoder", ".lock"))
            return


def seconds_per_epoch(log_dir, steps_per_epoch):
    """A training epoch's seconds from its TensorBoard steps: the median time between two
    logged steps (d_loss) times the steps per epoch; None without such events."""
    walls = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            if any(value.tag == "d_loss" for value in event.summary.value):
                walls[event.step] = event.wall_time
    steps = sorted(walls)
    gaps = [walls[b] - walls[a] for a, b in itertools.pairwise(steps) if b == a + 1]
    return round(float(np.median(gaps)) * steps_per_epoch, 1) if gaps else None


def score(args, common_flags, root, digit, mode):
    """Runs one mode (or reuses its earlier result); returns its metrics."""
    spec = MODES[mode]
    tag = f"d{digit}_n{args.test_size}_{mode}"
    result_dir = root / "results" / tag
    if not (result_dir / "metrics.json").exists():
        common.run_main([*common_flags, "--anomaly_test", "--test_size", args.test_size,
                         "--test_dir", result_dir.parent, "--test_result_dir", tag,
                         "--z_init", spec["z_init"], "--score", spec["score"],
                         "--test_epoch", args.test_epoch if spec["search"] else 0])
    metrics = json.loads((result_dir / "metrics.json").read_text())
    return {key: metrics.get(key) for key in ("roc_auc", "pr_auc", "images_per_second",
                                              "seconds", "encoder_steps")}


def benchmark_run(args, digit, seed):
    """Trains (or reuses) one digit's GAN and encoder at one seed and scores every mode."""
    root = run_root(args, seed)
    record = Path(args.records) / f"{args.gan}_{run_name(args)}_d{digit}_s{seed}.json"
    common_flags = ["--dataset", "mnist", "--normal_class", digit, "--data_dir", args.data_dir,
                    "--checkpoint_dir", root / "checkpoint", "--seed", seed, "--gan", args.gan,
                    "--batch_size", args.batch_size, "--epoch", args.epochs,
                    "--sample_dir", root / "samples" / f"d{digit}", "--log_dir", root / "logs",
                    *args.extra.split()]
    for flag in ("encoder_min_steps", "encoder_patience", "retries"):
        if getattr(args, flag) is not None:
            common_flags += [f"--{flag}", getattr(args, flag)]
    row = json.loads(record.read_text()) if record.exists() else {}
    if all(mode in row for mode in args.modes) and row.get("test_size") == args.test_size:
        return row  # measured before, perhaps on another machine: its checkpoints may be gone
    seed_from_shorter_training(args, digit, seed)
    if "train_seconds" not in row:
        row["train_seconds"] = common.run_main([*common_flags, "--train"])
        row["encoder_seconds"] = common.run_main([*common_flags, "--train_encoder"])
    folder = model_folder(args, digit, seed)
    config = json.loads((folder / "config.json").read_text())
    steps = int(tf.train.latest_checkpoint(str(folder)).rsplit("-", 1)[1])
    row["seconds_per_epoch"] = seconds_per_epoch(root / "logs" / folder.name,
                                                 steps // args.epochs)
    rejected = sorted(p.name for p in model_folder(args, digit, seed).glob("rejected_seed*"))
    row.update({"digit": digit, "seed": seed, "gan": args.gan, "gan_epochs": args.epochs,
                "encoder_min_steps": args.encoder_min_steps,
                "encoder_patience": args.encoder_patience,
                "encoder_stop": (config.get("encoder") or {}).get("stop"),
                "test_size": args.test_size, "training_seed": config.get("training_seed"),
                "rejected_trainings": rejected, "health": config.get("health"),
                "published_anogan_roc_auc": {name: row_[digit]
                                             for name, row_ in PUBLISHED_ANOGAN.items()}})
    for mode in args.modes:
        row[mode] = score(args, common_flags, root, digit, mode)
    row.update(common.provenance(args.command))
    common.write_record(record, row)
    return row


def health_passed(row, part):
    """The run's health verdict for ``part`` at the current limits (None: not checked)."""
    result = (row.get("health") or {}).get(part)
    if result is None:
        return None
    return health.verdict({k: v for k, v in result.items() if isinstance(v, float)})["passed"]


def mean_std(values):
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else None,
            "n": len(values)}


def summary(rows, modes):
    """Per digit and mode mean and deviation over seeds, means over all runs, the published
    rows beside them, and the health check's verdicts."""
    digits = sorted({r["digit"] for r in rows})
    per_digit = {}
    for digit in digits:
        runs = [r for r in rows if r["digit"] == digit]
        per_digit[digit] = {mode: mean_std([r[mode]["roc_auc"] for r in runs]) for mode in modes}
        for name, published in PUBLISHED_ANOGAN.items():
            per_digit[digit][f"published_{name}"] = published[digit]
    declared = [m for m in modes if m == DECLARED_MODE] or modes[:1]
    figures = {
        "runs": len(rows), "digits": digits, "seeds": sorted({r["seed"] for r in rows}),
        "per_digit": per_digit,
        "mean_roc_auc_over_runs": {m: mean_std([r[m]["roc_auc"] for r in rows])
                                   for m in modes},
        "published_anogan_mean": {name: round(statistics.fmean(p[d] for d in digits), 4)
                                  for name, p in PUBLISHED_ANOGAN.items()},
        "ocgan_mean": OCGAN_MEAN,
        "digits_below_published": {
            name: [d for d in digits if per_digit[d][declared[0]]["mean"] < p[d]]
            for name, p in PUBLISHED_ANOGAN.items()},
        "health_failed_gan": [(r["digit"], r["seed"]) for r in rows
                              if health_passed(r, "gan") is False],
        "health_failed_encoder": [(r["digit"], r["seed"]) for r in rows
                                  if health_passed(r, "encoder") is False],
        "retried": [(r["digit"], r["seed"], r["training_seed"]) for r in rows
                    if r["rejected_trainings"]],
        f"below_{LOW_AUC}_passed_health": [
            (r["digit"], r["seed"]) for r in rows if r[declared[0]]["roc_auc"] < LOW_AUC
            and health_passed(r, "gan") and health_passed(r, "encoder") is not False],
        "seconds_per_epoch": mean_std([r["seconds_per_epoch"] for r in rows
                                       if r["seconds_per_epoch"] is not None] or [0.0]),
    }
    return figures


def main(argv=None):
    args = parse_args(argv)
    args.command = common.script_command("mnist_one_class.py", argv)
    rows = []
    for seed in args.seeds:
        for digit in args.digits:
            rows.append(benchmark_run(args, digit, seed))
            common.print_json(rows[-1])
    common.print_json({"summary": summary(rows, args.modes), **common.environment()})


if __name__ == "__main__":
    main()
