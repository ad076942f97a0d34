"""The README's quick start as a new user runs it: ROC AUC, seconds, the encoder's steps.

    python benchmarks/quick_start.py [--data_dir ../shared/data] [--work_dir out/quick_start]
        [--record benchmarks/results/quick_start]

Runs the quick start's command (main.py, in this process) in ``--work_dir`` with MNIST copied
from ``--data_dir`` (no download), and writes one JSON record: its metrics, wall-clock seconds,
the encoder's steps and where its stopping rule stopped, the health check, and the command,
commit, date and machine.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import common

QUICK_START = ["--dataset", "mnist", "--normal_class", "0", "--epoch", "5", "--train",
               "--train_encoder", "--anomaly_test", "--z_init", "encoder", "--test_epoch", "0",
               "--score", "izif", "--test_size", "1000", "--encoder_max_steps", "1000"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data")
    parser.add_argument("--work_dir", default="out/quick_start")
    parser.add_argument("--record", default=None, help="folder for the JSON record")
    args = parser.parse_args(argv)
    work = Path(args.work_dir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(Path(args.data_dir) / "mnist", work / "data" / "mnist")
    here = Path.cwd()
    os.chdir(work)
    try:
        seconds = common.run_main(QUICK_START)
    finally:
        os.chdir(here)
    metrics = json.loads((work / "test_data" / "test_result" / "metrics.json").read_text())
    saved = json.loads(next((work / "checkpoint").glob("mnist_*/config.json")).read_text())
    health = metrics["health"]
    record = {"benchmark": "quick_start",
              **common.provenance("python main.py " + " ".join(QUICK_START)),
              "seconds": seconds, "roc_auc": metrics["roc_auc"], "pr_auc": metrics["pr_auc"],
              "threshold_source": metrics["threshold_source"], "f1": metrics["f1"],
              "encoder_steps": metrics["encoder_steps"], "encoder_stop": saved["encoder"]["stop"],
              "health_passed": all(check["passed"] for check in health.values() if check),
              "health": health}
    if args.record:
        common.write_record(Path(args.record) / f"quick_start_{record['date']}.json", record)
    common.print_json(record)


if __name__ == "__main__":
    sys.exit(main())
