"""The newcomer's command line: MNIST fetched on demand, MNIST sizes, one writer per checkpoint."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_images, write_mnist

import download
import main
from download import idx_md5

REPO = Path(__file__).resolve().parents[1]
TINY = ["--gf_dim", "8", "--df_dim", "8", "--retries", "0", "--encoder_min_steps", "0", "--encoder_patience", "0",
        "--z_dim", "8", "--batch_size", "8", "--no_figures"]


def error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert lines and err.count("error") == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def mnist_mirror(server, tmp_path, monkeypatch):
    """A loopback MNIST mirror of tiny idx files, trusted in place of the real ones."""
    folder = write_mnist(tmp_path / "made", train_per_digit=12, test_per_digit=3)
    for path in sorted(folder.iterdir()):
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        name = path.name.removesuffix(".gz")
        server.add(f"/mnist/{name}.gz", gzip.compress(data))
        monkeypatch.setitem(download.MNIST_MD5, name, idx_md5(path))
    monkeypatch.setattr(download, "MNIST_MIRRORS", (server.url("/mnist/"),))
    return server


def test_one_command_fetches_mnist_trains_and_scores_at_28(workdir, mnist_mirror):
    assert main.main(["--dataset", "mnist", "--normal_class", "0", "--train", "--anomaly_test",
                      "--epoch", "1", "--train_size", "64", "--test_size", "12", *TINY]) == 0
    assert sorted(p.name for p in (workdir / "data" / "mnist").iterdir()) == sorted(
        f"{name}.gz" for name in download.MNIST_MD5)
    folder = workdir / "checkpoint" / "mnist_8_28_28_normal0"
    assert json.loads((folder / "config.json").read_text())["output_height"] == 28
    assert list(folder.glob("ckpt-*.index"))
    assert list((workdir / "samples").glob("train_00_*.png"))
    metrics = json.loads((workdir / "test_data" / "test_result" / "metrics.json").read_text())
    assert metrics["n"] == 12 and metrics["roc_auc"] is not None
    served = len(mnist_mirror.requests)
    assert main.main(["--dataset", "mnist", "--normal_class", "0", "--anomaly_test",
                      "--test_size", "12", "--test_result_dir", "again", *TINY]) == 0
    assert len(mnist_mirror.requests) == served  # present files are not fetched again


def test_mnist_sizes_default_to_28_but_flags_win(workdir):
    parse = main.build_parser().parse_args
    data = main.resolve(parse(["--dataset", "mnist", "--train"])).data
    assert (data.input_size, data.output_size) == ((28, 28), (28, 28))
    data = main.resolve(parse(["--dataset", "MNIST", "--output_height", "32", "--train"])).data
    assert (data.input_size[0], data.output_size) == (28, (32, 32))
    data = main.resolve(parse(["--dataset", "faces", "--train"])).data
    assert (data.input_size[0], data.output_size[0]) == (108, 64)


def test_no_network_fails_in_one_line_and_leaves_nothing(workdir, closed_url, monkeypatch,
                                                          capsys):
    monkeypatch.setattr(download, "MNIST_MIRRORS", (closed_url,))
    assert main.main(["--dataset", "mnist", "--normal_class", "0", "--train", *TINY]) == 2
    line = error_line(capsys)
    assert line.startswith("error: cannot fetch MNIST into data/mnist (")
    assert "python download.py mnist --from PATH" in line
    assert not [p for p in (workdir / "data").rglob("*") if p.is_file()]
    assert not (workdir / "checkpoint").exists()


GRAY = ["--dataset", "gray", "--input_fname_pattern", "*.png", "--input_height", "28",
        "--output_height", "28", *TINY]


def test_second_training_on_a_folder_in_use_fails_at_once(workdir, capsys):
    write_images(workdir / "data" / "gray", 24, 28)
    write_images(workdir / "test_data" / "normal", 2, 28, seed=4)
    first = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), *GRAY, "--epoch", "1000", "--save_every", "2",
         "--train"], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    folder = workdir / "checkpoint" / "gray_8_28_28"
    try:
        deadline = time.monotonic() + 240
        while not list(folder.glob("ckpt-*.index")):
            assert time.monotonic() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.2)
        # Stopped, it keeps holding the folder but takes no CPU from the checks below.
        first.send_signal(signal.SIGSTOP)
        for job in ("--train", "--train_encoder"):
            capsys.readouterr()
            started = time.monotonic()
            assert main.main([*GRAY, job]) == 2
            err = capsys.readouterr().err
            errors = [line for line in err.splitlines() if line.startswith("error")]
            assert len(errors) == 1 and "Traceback" not in err
            assert errors[0].startswith(f"error: checkpoint folder {Path('checkpoint') / folder.name}"
                                   f" is in use by another training (pid {first.pid}: ")
            assert time.monotonic() - started < 60
        # Scoring from the checkpoint while another process holds it stays allowed.
        assert main.main([*GRAY, "--anomaly_test", "--test_epoch", "1", "--no_figures"]) == 0
        assert first.poll() is None
    finally:
        first.kill()
        first.communicate(timeout=60)
    # The kernel released the killed process's lock: the next training resumes from the newest
    # checkpoint whose index file is there (the kill may come before the 'checkpoint' file).
    capsys.readouterr()
    newest = max(int(p.name[5:-6]) for p in folder.glob("ckpt-*.index"))
    assert main.main([*GRAY, "--epoch", str(newest // 2 + 1), "--train"]) == 0
    assert f"resuming from step {newest}" in capsys.readouterr().out


def test_checkpoint_dir_that_is_a_file_is_refused_before_training(workdir, capsys):
    write_images(workdir / "data" / "gray", 24, 28)
    (workdir / "afile").write_text("not a folder")
    assert main.main([*GRAY, "--checkpoint_dir", "afile", "--epoch", "1", "--train"]) == 2
    assert "--checkpoint_dir afile is a file, not a folder" in error_line(capsys)
    assert not (workdir / "samples").exists() and not (workdir / "logs").exists()


def test_help_groups_the_flags(capsys):
    with pytest.raises(SystemExit):
        main.main(["--help"])
    out = capsys.readouterr().out
    for group in ("what to do", "data:", "model:", "training:", "anomaly test:", "outputs:",
                  "distribution:"):
        assert group in out
