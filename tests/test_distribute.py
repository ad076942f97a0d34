"""tf.distribute on CPU: two logical devices (mirrored) and two local worker processes."""

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from conftest import write_images

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--dataset", "gray", "--input_fname_pattern", "*.png", "--input_height", "28",
         "--output_height", "28", "--batch_size", "8", "--z_dim", "8", "--test_epoch", "3",
         "--test_batch_size", "5", "--gf_dim", "8", "--df_dim", "8", "--retries", "0",
         "--encoder_min_steps", "0", "--encoder_patience", "0", "--no_figures"]


def run_python(code, cwd, env=None, timeout=600):
    """Runs ``code`` in a fresh interpreter (device setup must precede TensorFlow's start)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


def scores(result_dir):
    with open(result_dir / "scores.csv", newline="") as handle:
        return {row["file"]: float(row["anomaly_score"]) for row in csv.DictReader(handle)}


def test_mirrored_on_two_cpu_devices_trains_both_gans_and_scores_like_default(tmp_path):
    write_images(tmp_path / "data" / "gray", 24, 28)
    write_images(tmp_path / "test_data" / "normal", 4, 28, seed=3)
    write_images(tmp_path / "test_data" / "anomaly", 3, 28, kind=6, seed=4)
    result = run_python(f"""
        import sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        sys.path.insert(0, {str(REPO)!r})
        import main
        flags = {FLAGS!r}
        mirrored = ["--strategy", "mirrored", "--devices", "/cpu:0,/cpu:1"]
        assert main.main([*flags, *mirrored, "--epoch", "1", "--train"]) == 0
        assert main.main([*flags, *mirrored, "--anomaly_test",
                          "--test_result_dir", "mirrored"]) == 0
        assert main.main([*flags, "--anomaly_test", "--test_result_dir", "default"]) == 0
        assert main.main([*flags, *mirrored, "--gan", "wgan_gp", "--epoch", "2",
                          "--train"]) == 0  # its G update is conditional: outside the replicas
        print("replicas", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
              .num_replicas_in_sync)
        """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2" in result.stdout
    assert sorted(p.name for p in (tmp_path / "checkpoint" / "gray_8_28_28").glob("*.index")) \
        == ["ckpt-2.index"]
    assert sorted(p.name for p in (tmp_path / "checkpoint" / "gray_8_28_28_wgan_gp").glob(
        "*.index")) == ["ckpt-4.index"]
    mirrored = scores(tmp_path / "test_data" / "mirrored")
    default = scores(tmp_path / "test_data" / "default")
    assert list(mirrored) == list(default) and len(mirrored) == 7
    np.testing.assert_allclose(list(mirrored.values()), list(default.values()), rtol=1e-4)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_two_workers_on_localhost_train_and_the_chief_writes_one_checkpoint(tmp_path):
    write_images(tmp_path / "data" / "gray", 24, 28)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    code = f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import main
        sys.exit(main.main({FLAGS!r} + ["--strategy", "multiworker", "--epoch", "1",
                                        "--train"]))
        """
    workers = [subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}})})
        for index in range(2)]
    try:
        outputs = [worker.communicate(timeout=300) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    folder = tmp_path / "checkpoint" / "gray_8_28_28"
    assert sorted(p.name for p in folder.glob("*.index")) == ["ckpt-2.index"]
    assert json.loads((folder / "config.json").read_text())["z_dim"] == 8
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["gray_8_28_28"]
