"""The exported SavedModel scores image files as the anomaly test does, outside this project."""

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap

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
    everything = {}
    for folder, paths in json.loads(sys.argv[2]).items():
        detector = tf.saved_model.load(folder)
        serve = detector.signatures["serving_default"]
        results = everything[folder] = {}
        for path in paths:
            pixels = np.asarray(Image.open(path))
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
    assert "(anomaly_test:normal_test_images)" in capsys.readouterr().out
    rows = read_scores(test_dir / "test_result")
    metrics = json.loads((test_dir / "test_result" / "metrics.json").read_text())
    results = score_outside(tmp_path, {saved: [test_dir / row["file"] for row in rows]})[
        str(saved)]
    assert results["threshold"] == pytest.approx(metrics["threshold"], rel=1e-6)
    for row in rows:
        score, flagged, map_shape, fake_shape = results[str(test_dir / row["file"])]
        resized = "anomaly/img_4" in row["file"]  # 37x37: Pillow's and TF's bicubic differ
        assert score == pytest.approx(float(row["anomaly_score"]), rel=2e-3 if resized else 1e-5)
        assert flagged == (score > metrics["threshold"])
        assert map_shape == [1, 28, 28] and fake_shape == [1, 28, 28, 1]
    assert results["search"] > 0
    info = json.loads((saved / "assets" / export.ASSET).read_text())
    assert info["threshold_source"] == "anomaly_test:normal_test_images"
    assert info["mode"]["z_init"] == "encoder" and info["model"]["c_dim"] == 1
    assert info["mode"]["residual_shift"] == metrics["residual_shift"] == 1
    assert "gan" in info["health"] and info["output_size"] == [28, 28]


def test_threshold_flag_moves_the_exported_threshold_and_a_rerun_replaces_it(tiny_detector,
                                                                              tmp_path):
    _, flags = tiny_detector
    saved = tmp_path / "detector"
    image = write_images(tmp_path / "one", 1, 28, kind=0)[0]
    high, critic = tmp_path / "detector_1e9", tmp_path / "critic"
    assert main.main([*flags, "--export", str(saved), "--threshold", "1e9"]) == 0
    shutil.copytree(saved, high)
    assert main.main([*flags, "--export", str(saved), "--threshold", "0"]) == 0
    assert main.main([*flags, "--export", str(critic), "--image_score", "critic"]) == 0
    results = score_outside(tmp_path, {high: [image], saved: [image], critic: [image]})
    assert results[str(high)]["threshold"] == 1e9 and not results[str(high)][str(image)][1]
    assert results[str(saved)]["threshold"] == 0 and results[str(saved)][str(image)][1]
    dcgan = model.DCGAN(ModelConfig(28, 28, 1, z_dim=16, gf_dim=8, df_dim=8),
                        tiny_detector[0] / "checkpoint" / "rings_8_28_28")
    assert dcgan.load()
    pixels = utils.load_image(image, (28, 28), (28, 28), False, 1)[None]
    assert results[str(critic)][str(image)][0] == pytest.approx(
        float(dcgan.critic_scores(pixels)[0]), rel=1e-5, abs=1e-5)
    assert json.loads((critic / "assets" / export.ASSET).read_text())["mode"][
        "image_score"] == "critic"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_without_a_fresh_encoder_is_one_line(tiny_detector, tmp_path, capsys):
    _, flags = tiny_detector
    other = [*flags, "--checkpoint_dir", str(tmp_path / "checkpoint")]
    assert main.main([*other, "--epoch", "1", "--train"]) == 0
    capsys.readouterr()
    assert main.main([*other, "--epoch", "1", "--export", str(tmp_path / "d")]) == 2
    assert "--export: no trained encoder" in error_line(capsys)
    assert main.main([*other, "--epoch", "1", "--train_encoder", "--encoder_min_steps", "2"]) == 0
    assert main.main([*other, "--epoch", "2", "--train"]) == 0
    capsys.readouterr()
    assert main.main([*other, "--epoch", "2", "--export", str(tmp_path / "d")]) == 2
    assert "was trained for G at step 4, G is now at step 8" in error_line(capsys)
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
