"""The exported SavedModel scores image files as the anomaly test does, outside this project."""

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line, read_scores, write_images
from PIL import Image

import export
import main
import model
import utils
from config import ModelConfig

SCORER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    from PIL import Image
    assert not any(name in sys.modules for name in ("main", "model", "ops", "utils"))

    def export_pixels(image):  # an image's uint8 pixels, as the README tells clients
        if image.mode.startswith("I") or image.mode == "F":
            values = np.asarray(image, np.float64)
            top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
            return np.clip(np.rint(values / top * 255), 0, 255).astype(np.uint8)
        return np.asarray(image.convert("RGBA") if image.mode == "P" else image)

    everything = {}
    for folder, paths in json.loads(sys.argv[2]).items():
        detector = tf.saved_model.load(folder)
        serve = detector.signatures["serving_default"]
        results = everything[folder] = {}
        for path in paths:
            pixels = export_pixels(Image.open(path))
            pixels = pixels[..., None] if pixels.ndim == 2 else pixels
            out = serve(images=tf.constant(pixels[None]))
            results[path] = [float(out["score"][0]), bool(out["is_anomaly"][0]),
                             list(out["residual_map"].shape), list(out["reconstruction"].shape)]
        searched = detector.signatures["search"](images=tf.constant(pixels[None]),
                                                 steps=tf.constant(3))
        results["search"] = float(searched["score"][0])
        results["threshold"] = float(detector.threshold.numpy())
    with open(sys.argv[1], "w") as handle:
        json.dump(everything, handle)
""")


def score_outside(tmp_path, files_by_model):
    """Scores each SavedModel folder's image files ({folder: files}) in one fresh Python (-I:
    no project on sys.path, another working directory); {folder: {file: result, ...}}."""
    script, out = tmp_path / "score.py", tmp_path / "scores.json"
    script.write_text(SCORER)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    spec = {str(folder): [str(path) for path in files] for folder, files in files_by_model.items()}
    done = subprocess.run([sys.executable, "-I", str(script), str(out), json.dumps(spec)],
                          cwd=elsewhere, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


def odd_test_dir(root):
    """Normal rings at the model's size; anomalies at odd sizes, in gray and RGB."""
    test_dir = root / "mixed"
    write_images(test_dir / "normal", 3, 28, kind=0, seed=5)
    write_images(test_dir / "anomaly", 2, 37, kind=4, seed=6)
    write_images(test_dir / "anomaly" / "rgb", 2, 28, mode="RGB", kind=7, seed=7)
    return test_dir


def test_exported_scores_equal_the_anomaly_tests_outside_the_project(tiny_detector, tmp_path,
                                                                     capsys):
    _, flags = tiny_detector
    test_dir = odd_test_dir(tmp_path)
    saved = tmp_path / "detector"
    assert main.main([*flags, "--anomaly_test", "--z_init", "encoder", "--test_epoch", "0",
                      "--residual_shift", "1", "--test_dir", str(test_dir),
                      "--export", str(saved)]) == 0
    assert "(heldout_train_images)" in capsys.readouterr().out
    rows = read_scores(test_dir / "test_result")
    metrics = json.loads((test_dir / "test_result" / "metrics.json").read_text())
    results = score_outside(tmp_path, {saved: [test_dir / row["file"] for row in rows]})[
        str(saved)]
    assert results["threshold"] == pytest.approx(metrics["threshold"], rel=1e-6)
    for row in rows:
        score, flagged, map_shape, fake_shape = results[str(test_dir / row["file"])]
        resized = "anomaly/img_4" in row["file"]  # 37x37: Pillow's and TF's bicubic differ
        assert score == pytest.approx(float(row["anomaly_score"]), rel=2e-3 if resized else 1e-5)
        assert flagged == (score > metrics["threshold"]) == (row["is_anomaly"] == "1")
        assert map_shape == [1, 28, 28] and fake_shape == [1, 28, 28, 1]
    assert results["search"] > 0
    info = json.loads((saved / "assets" / export.ASSET).read_text())
    assert info["threshold_source"] == metrics["threshold_source"] == "heldout_train_images"
    assert info["threshold"] == metrics["threshold"]
    assert info["mode"]["z_init"] == "encoder" and info["model"]["c_dim"] == 1
    assert info["mode"]["residual_shift"] == metrics["residual_shift"] == 1
    assert "gan" in info["health"] and info["output_size"] == [28, 28]


def test_threshold_flag_moves_the_exported_threshold_and_a_rerun_replaces_it(tiny_detector,
                                                                              tmp_path):
    _, flags = tiny_detector
    saved = tmp_path / "detector"
    image = write_images(tmp_path / "one", 1, 28, kind=0)[0]
    high = tmp_path / "detector_1e9"
    critic = [*flags, "--export", str(saved), "--image_score", "critic"]
    assert main.main([*critic, "--threshold", "1e9"]) == 0
    shutil.copytree(saved, high)
    assert main.main([*critic, "--threshold=-1e9"]) == 0
    results = score_outside(tmp_path, {high: [image], saved: [image]})
    assert results[str(high)]["threshold"] == 1e9 and not results[str(high)][str(image)][1]
    assert results[str(saved)]["threshold"] == -1e9 and results[str(saved)][str(image)][1]
    dcgan = model.DCGAN(ModelConfig(28, 28, 1, z_dim=16, gf_dim=8, df_dim=8),
                        tiny_detector[0] / "checkpoint" / "rings_8_28_28")
    assert dcgan.load()
    pixels = utils.load_image(image, (28, 28), (28, 28), False, 1)[None]
    assert results[str(saved)][str(image)][0] == pytest.approx(
        float(dcgan.critic_scores(pixels)[0]), rel=1e-5, abs=1e-5)
    assert json.loads((saved / "assets" / export.ASSET).read_text())["mode"][
        "image_score"] == "critic"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_without_a_fresh_encoder_is_one_line(tiny_detector, tmp_path, capsys):
    root, flags = tiny_detector
    shutil.copytree(root / "checkpoint", tmp_path / "checkpoint")
    other = [*flags, "--checkpoint_dir", str(tmp_path / "checkpoint")]
    encoder = tmp_path / "checkpoint" / "rings_8_28_28" / "encoder"
    shutil.move(encoder, tmp_path / "encoder")  # a GAN trained without --train_encoder
    capsys.readouterr()
    assert main.main([*other, "--export", str(tmp_path / "d")]) == 2
    assert "--export: no trained encoder" in error_line(capsys)
    shutil.move(tmp_path / "encoder", encoder)
    assert main.main([*other, "--epoch", "4", "--train"]) == 0
    capsys.readouterr()
    assert main.main([*other, "--epoch", "4", "--export", str(tmp_path / "d")]) == 2
    assert "was trained for G at step 12, G is now at step 16" in error_line(capsys)
    assert not (tmp_path / "d").exists()


def test_an_interrupted_export_leaves_the_old_model_whole(tiny_detector, tmp_path,
                                                          monkeypatch):
    _, flags = tiny_detector
    saved = tmp_path / "detector"
    assert main.main([*flags, "--export", str(saved), "--threshold", "1"]) == 0

    def digest():
        return {p.relative_to(saved): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in saved.rglob("*") if p.is_file()}

    before = digest()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export.utils, "write_text", interrupted)
    assert main.main([*flags, "--export", str(saved), "--threshold", "2"]) == 130
    assert digest() == before
    assert [p.name for p in tmp_path.iterdir()] == ["detector"]


def test_a_single_image_file_is_scored_and_printed(tiny_detector, tmp_path, capsys):
    _, flags = tiny_detector
    image = write_images(tmp_path / "inbox", 1, 28, kind=4)[0]
    assert main.main([*flags, "--anomaly_test", "--z_init", "encoder", "--test_epoch", "0",
                      "--test_dir", str(image)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith(image.name))
    _, score, verdict = line.split()
    assert verdict in ("anomalous", "normal") and float(score) > 0
    rows = read_scores(tmp_path / "inbox" / "test_result")
    assert [row["file"] for row in rows] == [image.name] and rows[0]["label"] == ""
    metrics = json.loads((tmp_path / "inbox" / "test_result" / "metrics.json").read_text())
    assert metrics["threshold_source"] == "heldout_train_images"
    assert (verdict == "anomalous") == (float(score) > metrics["threshold"])
    assert np.isfinite(float(score))
    assert Image.open(tmp_path / "inbox" / "test_result" / f"AD_0_{image.stem}.png")


def tree_digest(root):
    """{relative path: sha256} of every file under ``root`` (or of ``root``, a file)."""
    root = Path(root)
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_refuses_every_path_that_is_not_its_own_and_keeps_every_byte(tiny_detector,
                                                                           tmp_path, capsys):
    root, flags = tiny_detector
    mine = tmp_path / "my_files"
    write_images(mine, 2, 28, kind=3)
    (mine / "notes.txt").write_text("keep me")
    a_file = tmp_path / "report.txt"
    a_file.write_text("keep me too")
    targets = [root / "data", root / "data" / "rings", root / "checkpoint" / "rings_8_28_28",
               root / "checkpoint", mine, a_file]
    before = {target: tree_digest(target) for target in targets}
    for target in targets:
        capsys.readouterr()
        assert main.main([*flags, "--export", str(target)]) == 2
        line = error_line(capsys)
        assert f"--export {target}" in line and "not an earlier export" in line
        assert tree_digest(target) == before[target], target
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not [p for p in root.rglob(".*") if p.name.endswith((".tmp", ".old"))]


def mode_images(folder):
    """A 28x28 test image of every mode the anomaly test reads, in ``folder``: their paths."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    gray = write_images(folder / "gray", 1, 28, kind=0, seed=4)[0]
    ring = np.asarray(Image.open(gray))
    alpha = np.clip(rng.normal(160, 60, ring.shape), 0, 255).astype(np.uint8)
    colour = np.stack([ring, np.flipud(ring), 255 - ring], axis=-1)
    images = {"L": Image.fromarray(ring, "L"),
              "LA": Image.fromarray(np.stack([ring, alpha], -1), "LA"),
              "RGB": Image.fromarray(colour, "RGB"),
              "RGBA": Image.fromarray(np.concatenate([colour, alpha[..., None]], -1), "RGBA"),
              "P": Image.fromarray(colour, "RGB").quantize(16),
              "I;16": Image.fromarray(ring.astype(np.uint16) * 200)}
    paths = []
    for mode, image in images.items():
        path = folder / f"{mode.replace(';', '_')}.png"
        image.save(path)
        with Image.open(path) as saved:
            assert saved.mode == mode
        paths.append(path)
    shutil.rmtree(folder / "gray")
    return paths


def test_every_image_mode_gets_the_same_verdict_from_the_export_and_the_cli(tiny_detector,
                                                                           tmp_path):
    _, flags = tiny_detector
    paths = mode_images(tmp_path / "modes")
    saved = tmp_path / "detector"
    assert main.main([*flags, "--anomaly_test", "--z_init", "encoder", "--test_epoch", "0",
                      "--test_dir", str(tmp_path / "modes"), "--export", str(saved)]) == 0
    rows = {row["file"]: row for row in read_scores(tmp_path / "modes" / "test_result")}
    results = score_outside(tmp_path, {saved: paths})[str(saved)]
    for path in paths:
        score, flagged, _, _ = results[str(path)]
        row = rows[path.name]
        assert score == pytest.approx(float(row["anomaly_score"]), rel=1e-5), path.name
        assert flagged == (row["is_anomaly"] == "1"), path.name


def test_the_export_refuses_images_of_other_channel_counts(tiny_detector, tmp_path):
    import tensorflow as tf

    _, flags = tiny_detector
    saved = tmp_path / "detector"
    assert main.main([*flags, "--export", str(saved)]) == 0
    serve = tf.saved_model.load(str(saved)).signatures["serving_default"]
    for channels in (5, 0):
        with pytest.raises(tf.errors.InvalidArgumentError, match="channel"):
            serve(images=tf.zeros([1, 28, 28, channels], tf.uint8))


def test_a_result_folder_in_use_is_refused_and_stale_staging_is_removed(tiny_detector,
                                                                        tmp_path, capsys):
    import runtime

    _, flags = tiny_detector
    test_dir = tmp_path / "inbox"
    write_images(test_dir, 2, 28, kind=4)
    stale = [test_dir / ".test_result.partial-dead", test_dir / ".test_result.old-1",
             tmp_path / ".detector.77.tmp"]
    for folder in stale:
        (folder / "sub").mkdir(parents=True)
    one_pass = ["--anomaly_test", "--z_init", "encoder", "--test_epoch", "0", "--test_dir",
                str(test_dir)]
    with runtime.output_lock(test_dir / "test_result", "anomaly test"):
        capsys.readouterr()
        assert main.main([*flags, *one_pass]) == 2
        assert "is being written by another anomaly test now" in error_line(capsys)
    assert not (test_dir / "test_result").exists()
    assert main.main([*flags, *one_pass, "--export", str(tmp_path / "detector")]) == 0
    assert not any(folder.exists() for folder in stale)
    assert sorted(p.name for p in test_dir.iterdir()) == ["img_4_000.png", "img_4_001.png",
                                                          "test_result"]
