"""Nothing lost, nothing silently wrong: damaged checkpoints, odd images, result folders,
bad flags and slow mirrors each end in correct results or one stderr line, losing nothing."""

import hashlib
import json
import shutil
import struct
import threading
import time
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY_FLAGS, error_line, exit_code, read_scores, write_images
from PIL import Image

import download
import evaluation
import inputs
import main
import model
import training
import utils
from config import ModelConfig


def digests(folder):
    """{relative path: sha256} of every file under ``folder``."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def trained_copy(tiny_detector, tmp_path):
    """A private copy of the shared tiny detector (3 epochs, 12 steps; checkpoints at steps
    4, 8, 12): its flags now point at the copy."""
    root, flags = tiny_detector
    shutil.copytree(root / "checkpoint", tmp_path / "checkpoint")
    copied = [str(tmp_path / "checkpoint") if f == str(root / "checkpoint") else f
              for f in flags]
    copied += ["--sample_dir", str(tmp_path / "samples"), "--log_dir", str(tmp_path / "logs"),
               "--save_every", "4"]
    return tmp_path / "checkpoint" / "rings_8_28_28", copied


def steps_of(folder):
    return sorted(int(p.name[5:-6]) for p in Path(folder).glob("ckpt-*.index"))


# 1. Checkpoints ---------------------------------------------------------------------------

def test_a_lost_checkpoint_index_resumes_from_the_newest_and_deletes_nothing(trained_copy,
                                                                           capsys):
    folder, flags = trained_copy
    (folder / "checkpoint").unlink()
    kept = {k: v for k, v in digests(folder).items() if k.startswith("ckpt-")}
    capsys.readouterr()
    assert main.main([*flags, "--epoch", "4", "--train"]) == 0
    out = capsys.readouterr()
    assert "'checkpoint' index file" in out.err and "restored ckpt-12" in out.err
    assert "resuming from step 12" in out.out
    after = digests(folder)
    assert all(after.get(name) == digest for name, digest in kept.items())  # none rotated away
    assert steps_of(folder)[-1] == 16


@pytest.mark.parametrize("damage", ["truncate_data", "delete_index"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(trained_copy, capsys,
                                                                    damage):
    folder, flags = trained_copy
    newest = sorted(folder.glob("ckpt-12.*"))
    if damage == "truncate_data":
        data = next(p for p in newest if ".data-" in p.name)
        data.write_bytes(data.read_bytes()[:100])
    else:
        (folder / "ckpt-12.index").unlink()
    capsys.readouterr()
    assert main.main([*flags, "--epoch", "4", "--train"]) == 0
    out = capsys.readouterr()
    warning = [line for line in out.err.splitlines() if "newest intact checkpoint" in line]
    assert len(warning) == 1 and "ckpt-12" in warning[0] and "restored ckpt-8" in warning[0]
    assert "resuming from step 8" in out.out
    restored = model.DCGAN(ModelConfig(28, 28, 1, z_dim=16, gf_dim=8, df_dim=8), folder)
    assert restored.load() and restored.steps_done == 16
    assert steps_of(folder)[:2] == [4, 8]  # the older checkpoints were not rotated away


@pytest.mark.parametrize("text", ["{", "[1, 2]", "null"])
def test_an_invalid_config_json_is_one_line(trained_copy, capsys, text):
    folder, flags = trained_copy
    (folder / "config.json").write_text(text)
    before = digests(folder)
    assert main.main([*flags, "--epoch", "4", "--train"]) == 2
    assert "config.json" in error_line(capsys)
    assert digests(folder) == before


# 2. Image decoding ------------------------------------------------------------------------

def test_sixteen_bit_images_are_scaled_by_their_range_and_alpha_is_composited(tmp_path,
                                                                              capsys):
    deep = (np.linspace(0, 62720, 28 * 28).reshape(28, 28)).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    pixels = utils.load_image(tmp_path / "deep.png", (28, 28), (28, 28), False, 1, (0.0, 1.0))
    np.testing.assert_allclose(pixels[..., 0], np.rint(deep / 65535 * 255) / 255, atol=1e-6)
    assert (pixels >= 0.999).mean() == 0.0  # was 99.5 % at 255, clipped
    shape = np.zeros((28, 28, 4), np.uint8)
    shape[8:20, 8:20, 3] = 255  # black where opaque, the shape only in the alpha channel
    Image.fromarray(shape, "RGBA").save(tmp_path / "alpha.png")
    pixels = utils.load_image(tmp_path / "alpha.png", (28, 28), (28, 28), False, 3, (0.0, 1.0))
    assert pixels[14, 14].max() == 0.0 and pixels[0, 0].min() == 1.0
    assert inputs.readable_images([str(tmp_path / "alpha.png"), str(tmp_path / "deep.png")])
    assert "1 of 2 images are transparent" in capsys.readouterr().err


# 3. Result folders ------------------------------------------------------------------------

def labelled(root):
    test_dir = root / "labelled"
    write_images(test_dir / "normal", 3, 28, kind=0, seed=3)
    write_images(test_dir / "anomaly", 2, 28, kind=4, seed=4)
    return test_dir


@pytest.mark.parametrize(("name", "message"), [
    ("", "must be one folder name"), ("../../escape", "must be one folder name"),
    ("normal", "the name of the normal images' folder"),
    ("anomaly", "holds files that are not an anomaly test's results"),
    ("notes", "holds files that are not an anomaly test's results")])
def test_result_folders_that_would_corrupt_the_evaluation_are_refused(tiny_detector, tmp_path,
                                                                     capsys, name, message):
    _, flags = tiny_detector
    test_dir = labelled(tmp_path)
    (test_dir / "notes").mkdir()
    (test_dir / "notes" / "mine.txt").write_text("a user's notes, not images")
    before = digests(tmp_path)
    assert main.main([*flags, "--anomaly_test", "--test_dir", str(test_dir),
                      f"--test_result_dir={name}"]) == 2
    assert message in error_line(capsys)
    assert digests(tmp_path) == before


def test_old_results_are_never_scored_and_flattened_names_never_collide(tiny_detector, tmp_path,
                                                                       capsys):
    _, flags = tiny_detector
    test_dir = labelled(tmp_path)
    write_images(test_dir / "anomaly" / "img", 1, 28, kind=5, seed=5)  # anomaly/img/img_5_000
    Image.open(test_dir / "anomaly" / "img" / "img_5_000.png").save(
        test_dir / "anomaly" / "img_img_5_000.png")  # flattens alike
    run = [*flags, "--anomaly_test", "--z_init", "encoder", "--test_epoch", "0",
           "--test_dir", str(test_dir)]
    assert main.main(run) == 0
    (test_dir / "test_result" / "metrics.json").unlink()
    (test_dir / "test_result").rename(test_dir / "old_run")  # renamed, without metrics.json
    assert main.main(run) == 0
    rows = read_scores(test_dir / "test_result")
    assert len(rows) == 7 and not any(row["file"].startswith("old_run") for row in rows)
    outputs = sorted(p.name for p in (test_dir / "test_result").glob("AD_0_*.png"))
    assert len(outputs) == 7
    assert "AD_0_anomaly_img_img_5_000.png" in outputs
    assert "AD_0_anomaly_img_img_5_000-2.png" in outputs


# 4. Unwritable outputs ----------------------------------------------------------------------

def test_an_unwritable_output_folder_is_refused_before_any_work(trained_copy, tmp_path, capsys):
    folder, flags = trained_copy
    (tmp_path / "afile").write_text("x")
    before = digests(folder)
    assert main.main([*flags, "--epoch", "4", "--sample_dir", str(tmp_path / "afile" / "s"),
                      "--train"]) == 2
    assert "--sample_dir" in error_line(capsys) and digests(folder) == before
    assert main.main([*flags, "--anomaly_test", "--log_dir", str(tmp_path / "afile" / "l"),
                      "--test_dir", str(labelled(tmp_path))]) == 2
    assert "--log_dir" in error_line(capsys)
    assert not (tmp_path / "labelled" / "test_result").exists()


def test_an_output_failing_mid_training_loses_no_steps(trained_copy, capsys, monkeypatch):
    folder, flags = trained_copy
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(28, "No space left on device", "samples/train.png")

    monkeypatch.setattr(utils, "save_images", failing)
    assert main.main([*flags, "--epoch", "5", "--sample_every", "2", "--train"]) == 2
    last = capsys.readouterr().err.rstrip("\n").split("\r")[-1]  # after the progress bar
    assert last == "error: samples/train.png: No space left on device"
    assert steps_of(folder)[-1] == 16  # the step the second grid failed at was saved


# 5. An interrupted anomaly test -----------------------------------------------------------

def test_an_interrupted_anomaly_test_leaves_the_old_results_whole(tiny_detector, tmp_path,
                                                                  capsys, monkeypatch):
    _, flags = tiny_detector
    test_dir = labelled(tmp_path)
    run = [*flags, "--anomaly_test", "--test_dir", str(test_dir), "--test_batch_size", "2",
           "--test_epoch", "2"]
    assert main.main(run) == 0
    before = digests(test_dir)
    added = []
    original = evaluation.AnomalyReport.add

    def interrupted(self, *args, **kwargs):
        added.append(1)
        if len(added) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(evaluation.AnomalyReport, "add", interrupted)
    capsys.readouterr()
    assert main.main(run) == 130
    assert "earlier results and checkpoints are unchanged" in capsys.readouterr().err
    assert {k: v for k, v in digests(test_dir).items() if not k.startswith(".")} == before
    monkeypatch.setattr(evaluation.AnomalyReport, "add", original)
    assert main.main(run) == 0  # the next run cleans the hidden staging folder up
    assert [p.name for p in test_dir.iterdir() if p.name.startswith(".")] == []


# 6. Flags and files that used to end in a traceback ---------------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--min_steps", "-1"], "--min_steps must be >= 0"),
    (["--test_learning_rate", "inf"], "expected a finite number, got 'inf'"),
    (["--threshold", "nan"], "expected a finite number, got 'nan'"),
    (["--learning_rate", "nan"], "expected a finite number, got 'nan'"),
    (["--output_height", "100000"], "GiB are available"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    assert exit_code(["--dataset", "rings", *TINY_FLAGS, *extra, "--train"]) == 2
    assert message in error_line(capsys)


def bomb_png(path, width=20000, height=20000):
    """A PNG whose header claims ``width`` x ``height`` pixels (Pillow refuses to open it)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_bombs_empty_files_and_odd_names_among_the_images_are_passed_over(trained_copy,
                                                                        tiny_detector,
                                                                        tmp_path, capsys):
    root, _ = tiny_detector
    _, flags = trained_copy
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    flags = [str(data) if f == str(root / "data") else f for f in flags]
    bomb_png(data / "rings" / "000_bomb.png")
    (data / "rings" / "001_empty.png").write_bytes(b"")
    assert main.main([*flags, "--anomaly_test", "--test_dir", str(labelled(tmp_path)),
                      "--z_init", "encoder", "--test_epoch", "0"]) == 0
    (data / "rings" / b"\xff\xfe.png".decode("utf-8", "surrogateescape")).write_bytes(
        (data / "rings" / "img_0_000.png").read_bytes())
    capsys.readouterr()
    assert main.main([*flags, "--epoch", "4", "--train"]) == 0
    err = capsys.readouterr().err
    assert "not valid UTF-8" in err and "skipped 2 of" in err and "Traceback" not in err


# 7. Results that used to be invalid or misleading -----------------------------------------

def test_zero_one_masks_count_and_an_unreadable_mask_is_passed_over(tiny_detector, tmp_path,
                                                                   capsys):
    _, flags = tiny_detector
    test_dir = labelled(tmp_path)
    masks = tmp_path / "ground_truth" / "anomaly"
    masks.mkdir(parents=True)
    square = np.zeros((28, 28), np.uint8)
    square[10:18, 10:18] = 1  # stored as 0/1, not 0/255
    Image.fromarray(square).save(masks / "img_4_000_mask.png")
    (masks / "img_4_001_mask.png").write_bytes(b"")
    assert main.main([*flags, "--anomaly_test", "--test_dir", str(test_dir), "--z_init",
                      "encoder", "--test_epoch", "0"]) == 0
    err = capsys.readouterr().err
    assert "1 mask(s) cannot be read" in err and "img_4_001_mask.png" in err
    metrics = json.loads((test_dir / "test_result" / "metrics.json").read_text())
    assert metrics["pixel_roc_auc"] is not None


def test_metrics_are_valid_json_and_divergence_names_what_is_kept(tmp_path):
    utils.write_json(tmp_path / "m.json", {"a": float("nan"), "b": [float("inf"), 1.5]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [None, 1.5]}
    dcgan = model.DCGAN(ModelConfig(28, 28, 1, z_dim=8, gf_dim=8, df_dim=8),
                        tmp_path / "ckpt")

    def diverging(*batch):
        return {"d_loss": float("nan")}

    phase = training.Phase("", diverging, dcgan.step, None, dcgan.save,
                           lambda: dcgan.checkpoints.latest, None)
    with pytest.raises(training.TrainingDiverged, match="no checkpoint was written"):
        training.logged_step(phase, (), tf.summary.create_noop_writer(),
                             type("Bar", (), {"set_postfix": lambda self, values: None})())


# 8. Mirrors that trickle, stall, or serve a bomb ------------------------------------------

class SlowHandler(BaseHTTPRequestHandler):
    """Sends its headers, then one byte every ``server.gap`` seconds (or nothing at all)."""

    def do_GET(self):
        if self.server.silent:
            time.sleep(self.server.gap * 20)
            return
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):
            if self.server.done.is_set():
                return
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(self.server.gap)

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    httpd.gap, httpd.silent, httpd.done = 0.2, False, threading.Event()
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield httpd
    httpd.done.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("silent", [False, True])
def test_a_trickling_or_silent_mirror_ends_at_the_deadline_visibly(slow_server, tmp_path,
                                                                   capsys, silent):
    slow_server.silent = silent
    url = f"http://127.0.0.1:{slow_server.server_address[1]}/file.bin"
    options = download.FetchOptions(retries=2, backoff=0.0, timeout=(1.0, 2.0), deadline=1.5,
                                    heartbeat=0.3)
    started = time.monotonic()
    with pytest.raises(download.DownloadError, match="deadline|timed out"):
        download.fetch_first([url], tmp_path / "file.bin", options=options)
    assert time.monotonic() - started < 6.0
    assert "still waiting for 127.0.0.1" in capsys.readouterr().out
    assert not (tmp_path / "file.bin").exists()


def test_a_zip_bomb_is_refused_before_anything_is_extracted(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * (50 << 20))  # 50 MiB in about 50 KiB
    with pytest.raises(download.DownloadError, match="declare 52428800 bytes"):
        download.safe_extract(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()
