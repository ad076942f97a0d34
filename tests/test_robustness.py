"""Bad input, interrupted runs and faults: one clear line, the right exit code, nothing lost."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import error_line, exit_code, write_images

import evaluation
import inputs
import main
import model
import utils
from config import ModelConfig, TrainConfig
from samples import sample_inputs
from search import SearchResult
from training import TrainingDiverged

REPO = Path(__file__).resolve().parents[1]
GRAY = ["--dataset", "gray", "--input_fname_pattern", "*.png", "--input_height", "28",
        "--output_height", "28", "--batch_size", "8", "--gf_dim", "8", "--df_dim", "8",
        "--retries", "0", "--encoder_min_steps", "0", "--encoder_patience", "0"]


@pytest.mark.parametrize("flags, expected", [
    (["--train"], ("dataset folder data/celebA not found: put images there or run "
                  "`python download.py celebA`")),
    ([*GRAY, "--normal_class", "0", "--train"], "--normal_class applies to --dataset mnist"),
    ([*GRAY, "--output_height", "4", "--train"], "--output_height/width must be >= 8"),
    ([*GRAY, "--epoch", "0", "--train"], "--epoch must be positive"),
    ([*GRAY, "--batch_size", "-1", "--train"], "batch sizes must be positive"),
    ([*GRAY, "--ano_lambda", "1.5", "--anomaly_test"], "--ano_lambda must be in [0, 1]"),
    (["--dataset", "mnist", "--y_dim", "3", "--train"], "--y_dim for mnist is 0 or 10"),
    ([*GRAY], "nothing to do"),
    ([*GRAY, "--epoch", "x", "--train"], "argument --epoch: invalid int value: 'x'"),
    ([*GRAY, "--normal_class", "12", "--train"], "digits must be in 0..9"),
])
def test_bad_flags_and_missing_data_give_one_line(workdir, capsys, flags, expected):
    assert exit_code(flags) == 2
    assert expected in error_line(capsys)


def test_empty_dataset_folder_names_the_pattern(workdir, capsys):
    (workdir / "data" / "gray").mkdir()
    write_images(workdir / "data" / "gray", 2, 28, suffix="bmp")
    assert main.main([*GRAY, "--train"]) == 2
    assert "no images matching '*.png' in data/gray" in error_line(capsys)


def test_corrupt_and_truncated_images_are_skipped_with_a_count(workdir, capsys):
    paths = write_images(workdir / "data" / "gray", 12, 28)
    paths[0].write_bytes(b"not an image at all")
    paths[1].write_bytes(paths[1].read_bytes()[:60])
    source = inputs.folder_source(workdir / "data" / "gray", "*.png")
    assert len(source) == 10 and str(paths[0]) not in source.files
    err = capsys.readouterr().err
    assert err.startswith("warning: skipped 2 of 12 images that cannot be read")
    for path in paths[2:]:
        path.write_bytes(b"")
    assert main.main([*GRAY, "--train"]) == 2
    assert "none of the 12 images can be read" in error_line(capsys)


def test_images_smaller_than_the_crop_are_refused(workdir, capsys):
    write_images(workdir / "data" / "gray", 4, 28)
    assert main.main([*GRAY, "--crop", "--input_height", "32", "--train"]) == 2
    line = error_line(capsys)
    assert "img_0_000.png: image is 28x28, smaller than the crop 32x32 (4 such images)" in line


def test_bad_test_dir_is_refused(workdir, capsys):
    write_images(workdir / "data" / "gray", 24, 28)
    assert main.main([*GRAY, "--epoch", "1", "--train"]) == 0
    capsys.readouterr()
    (workdir / "afile").write_text("x")
    assert main.main([*GRAY, "--anomaly_test", "--test_dir", "afile"]) == 2
    assert "afile is not an image file" in error_line(capsys)
    assert main.main([*GRAY, "--anomaly_test", "--test_dir", "nowhere"]) == 2
    assert "no test images in nowhere" in error_line(capsys)


def test_cli_error_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "--dataset", "nope",
                             "--train"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert lines == [("error: dataset folder data/nope not found: put images there or run "
                     "`python download.py nope`")]
    assert "Traceback" not in result.stderr


def checkpoint_steps(folder):
    return sorted(int(p.name.split("-")[1].split(".")[0]) for p in Path(folder).glob("*.index"))


def start_training(workdir, *extra):
    return subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), *GRAY, "--epoch", "500", "--save_every", "2",
         "--train", *extra], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_checkpoint(folder, process, step, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if checkpoint_steps(folder) and checkpoint_steps(folder)[-1] >= step:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.kill()
    pytest.fail("no checkpoint in time")


def test_sigkill_mid_training_resumes_from_last_checkpoint(workdir, capsys):
    write_images(workdir / "data" / "gray", 24, 28)
    folder = workdir / "checkpoint" / "gray_8_28_28"
    process = start_training(workdir)
    try:
        wait_for_checkpoint(folder, process, 4)
        time.sleep(np.random.default_rng().uniform(0, 1.5))
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    last = checkpoint_steps(folder)[-1]
    restored = model.DCGAN(ModelConfig(28, 28, 1, gf_dim=8, df_dim=8), folder)
    assert restored.load() and restored.steps_done == last
    capsys.readouterr()
    assert main.main([*GRAY, "--epoch", str(last // 2 + 2), "--train"]) == 0
    assert f"resuming from step {last}" in capsys.readouterr().out
    assert checkpoint_steps(folder)[-1] == last + 4


def test_sigint_saves_a_checkpoint_before_exiting(workdir):
    write_images(workdir / "data" / "gray", 24, 28)
    folder = workdir / "checkpoint" / "gray_8_28_28"
    process = start_training(workdir, "--save_every", "1000", "--sample_every", "1")
    try:
        deadline = time.monotonic() + 240
        while not (workdir / "samples" / "train_00_0001.png").exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    message = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(message) == 1 and "interrupted at step" in message[0]
    step = int(message[0].split("interrupted at step ")[1].split(";")[0])
    assert step >= 1 and checkpoint_steps(folder) == [step]


def test_nan_losses_stop_training_and_keep_the_last_good_checkpoint(tmp_path):
    config = ModelConfig(16, 16, 1, z_dim=4, gf_dim=4, df_dim=4)
    dcgan = model.DCGAN(config, tmp_path / "ckpt", TrainConfig(
        epochs=1, save_every=2, sample_dir=str(tmp_path / "s"), log_dir=str(tmp_path / "l")))
    good = tf.data.Dataset.from_tensors((tf.zeros((4, 16, 16, 1)), tf.zeros((4, 0)))).repeat(2)
    bad = good.map(lambda x, y: (x * np.nan, y))
    with pytest.raises(TrainingDiverged, match="non-finite at step 3.*last good"):
        dcgan.train(good.concatenate(bad), 4, 4, sample_inputs(config, 4))
    assert checkpoint_steps(tmp_path / "ckpt") == [2]
    fresh = model.DCGAN(config, tmp_path / "ckpt")
    assert fresh.load() and fresh.steps_done == 2
    assert all(np.isfinite(v.numpy()).all() for v in fresh.generator.variables)


def fake_result(scores):
    scores = np.asarray(scores, np.float32)
    images = np.zeros((len(scores), 8, 8, 1), np.float32)
    return images, SearchResult(scores, scores, scores, np.zeros((len(scores), 2)),
                                      {0: images, 1: images})


def test_interrupted_report_leaves_old_scores_intact_and_reruns(tmp_path):
    source = inputs.ImageSource(names=["a.png", "b.png", "c.png"], channels=1,
                                labels=np.array([0, 1, 1]))
    (tmp_path / "scores.csv").write_text("old complete results\n")
    report = evaluation.AnomalyReport(tmp_path, source, (-1.0, 1.0))
    report.add(*fake_result([1.0, 5.0]))
    report.images_written.close()  # a killed process writes nothing more
    # Interrupted here: the old scores.csv is untouched, the partial rows stay hidden.
    assert (tmp_path / "scores.csv").read_text() == "old complete results\n"
    assert report.result_dir.name.startswith(f".{tmp_path.name}.partial-")
    assert (report.result_dir / ".scores.partial.csv").read_text().count("\n") == 3
    report = evaluation.AnomalyReport(tmp_path, source, (-1.0, 1.0))
    report.add(*fake_result([1.0, np.nan]))
    report.add(*fake_result([3.0]))
    metrics = report.finish(2.0, "manual", {})
    assert metrics["non_finite"] == ["b.png"] and metrics["roc_auc"] == 1.0
    assert (tmp_path / "scores.csv").read_text().splitlines()[1:] == [
        "a.png,0,1,1,1,0", "b.png,1,nan,nan,nan,0", "c.png,1,3,3,3,1"]
    assert not (tmp_path / ".scores.partial.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not [p for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}.")]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("old complete results\n")
    with pytest.raises(RuntimeError), utils.atomic_path(path) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("disk full")
    assert path.read_text() == "old complete results\n"
    assert list(tmp_path.iterdir()) == [path]


def test_threads_writing_one_file_each_leave_it_whole(tmp_path):
    path = tmp_path / "AD_0_a.png"
    contents = [bytes([k]) * 100_000 for k in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda data: [utils.write_bytes(path, data) for _ in range(20)], contents))
    assert path.read_bytes() in contents
    assert list(tmp_path.iterdir()) == [path]
