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


def test_scoring_memory_prints_peak_rss_per_size():
    figures = run_benchmark("scoring_memory.py", "--sizes", "8", "16")
    assert set(figures["peak_rss_mb"]) == {"8", "16"}
    assert figures["ratio"] > 0
