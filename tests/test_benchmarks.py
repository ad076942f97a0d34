"""The benchmark scripts run on tiny shapes and print the figures they promise, as JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--height", "16", "--channels", "3", "--batch", "2"]


def run_benchmark(script, *args):
    """The JSON object a benchmark script prints."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_latent_search_prints_speedup_and_roofline():
    figures = run_benchmark("latent_search.py", *TINY, "--steps", "2", "--per_image", "1",
                           "--repeats", "2")
    for key in ("per_image_img_iter_per_s", "batched_img_iter_per_s", "matmul_gflops",
                "roofline_ratio", "speedup_at_matmul_rate"):
        assert figures[key] > 0
    assert figures["speedup"] == pytest.approx(
        figures["batched_img_iter_per_s"] / figures["per_image_img_iter_per_s"], abs=0.01)
    assert figures["flops_per_img_iter"] > 0
    assert isinstance(figures["onednn"], bool)


def test_train_step_prints_images_per_second_and_roofline():
    figures = run_benchmark("train_step.py", *TINY, "--steps", "1")
    assert figures["images_per_s"] > 0
    assert 0 < figures["roofline_ratio"] == pytest.approx(
        figures["gflops"] / figures["matmul_gflops"], abs=0.01)


def test_conv_layers_times_every_convolution_both_ways():
    figures = run_benchmark("conv_layers.py", *TINY, "--seconds", "0.01")
    assert len(figures["layers"]) == 8
    assert all(ms > 0 for ms in figures["total_ms"].values())


@pytest.mark.parametrize("dataset", ["mnist", "mvtec"])
def test_scoring_memory_prints_peak_rss_per_size(dataset):
    figures = run_benchmark("scoring_memory.py", "--dataset", dataset, "--sizes", "8", "16")
    assert figures["dataset"] == dataset and set(figures["peak_rss_mb"]) == {"8", "16"}
    assert figures["ratio"] > 0


def test_mvtec_synthetic_prints_image_and_pixel_aucs(tmp_path):
    figures = run_benchmark("mvtec_synthetic.py", "--size", "16", "--train", "16",
                            "--test_good", "4", "--test_defects", "2", "--batch_size", "8",
                            "--epochs", "1", "--encoder_epoch", "1", "--modes", "b",
                            "--image_scores", "sum,top1", "--work_dir", str(tmp_path))
    assert figures["test_images"] == 8
    for name in ("b_sum", "b_top1"):
        assert 0 <= figures[name]["roc_auc"] <= 1 and 0 <= figures[name]["pixel_roc_auc"] <= 1
        assert set(figures[name]["per_type_roc_auc"]) == {"spot", "scratch"}


def test_mnist_one_class_prints_each_modes_auc_and_reuses_checkpoints(tmp_path):
    from conftest import write_mnist

    write_mnist(tmp_path / "data" / "mnist", train_per_digit=12, test_per_digit=3)
    flags = ["--data_dir", str(tmp_path / "data"), "--digits", "1", "--epochs", "1",
             "--encoder_epoch", "1", "--test_size", "20", "--test_epoch", "2",
             "--batch_size", "8", "--modes", "a,b,c", "--work_dir", str(tmp_path / "work")]
    done = subprocess.run([sys.executable, str(BENCHMARKS / "mnist_one_class.py"), *flags],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    decoder, text, rows = json.JSONDecoder(), done.stdout.strip(), []
    while text:
        row, end = decoder.raw_decode(text)
        rows.append(row)
        text = text[end:].strip()
    assert len(rows) == 2
    row, summary = rows[0], rows[1]["summary"]
    assert row["digit"] == 1 and row["published_anogan_roc_auc"] == 0.992
    assert all(0 <= row[mode]["roc_auc"] <= 1 for mode in "abc")
    assert row["best_roc_auc"] == max(row[mode]["roc_auc"] for mode in "abc")
    assert summary["digits"] == [1] and set(summary["mean_roc_auc"]) == {"a", "b", "c"}
    again = subprocess.run([sys.executable, str(BENCHMARKS / "mnist_one_class.py"), *flags],
                           capture_output=True, text=True, timeout=900, check=False)
    assert again.returncode == 0 and "already trained" in again.stdout + again.stderr
