"""The encoder's stopping rule: it trains until its residual on held-out images stops falling,
and when it has stopped while G(E(x)) is still poor, the warning names G."""

import json

import pytest
from conftest import write_images

import main
from training import Plateau


def rule(values, every=10, patience=2, floor=0, ceiling=1000):
    """A Plateau fed ``values`` one check at a time; the step it stops at (None: never)."""
    feed = iter(values)
    plateau = Plateau(lambda: next(feed), every, patience, floor, ceiling)
    for step in range(1, every * len(values) + 1):
        if plateau.should_stop(step):
            return step, plateau
    return None, plateau


def test_it_stops_on_a_plateau_it_can_see():
    step, plateau = rule([1.0, 0.8, 0.7, 0.698, 0.697, 0.5])
    assert step == 50 and plateau.reason == "plateau"  # 0.698 and 0.697: under 1% each
    assert [value for _, value in plateau.history] == [1.0, 0.8, 0.7, 0.698, 0.697]
    assert rule([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])[0] is None  # still falling: never


def test_it_trains_at_least_the_floor_and_at_most_the_ceiling():
    step, plateau = rule([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], floor=45)
    assert step == 50 and plateau.reason == "plateau"
    step, plateau = rule([1.0, 0.9, 0.8, 0.7], ceiling=25)
    assert step == 25 and plateau.reason == "ceiling"


@pytest.fixture
def poor_gan(tmp_path):
    """A tiny DCGAN trained two steps on rings: G is poor; (root, flags)."""
    write_images(tmp_path / "data" / "rings", 40, 28, kind=0)
    flags = ["--dataset", "rings", "--input_fname_pattern", "*.png", "--input_height", "28",
             "--output_height", "28", "--batch_size", "8", "--z_dim", "8", "--gf_dim", "8",
             "--df_dim", "8", "--retries", "0", "--data_dir", str(tmp_path / "data"),
             "--checkpoint_dir", str(tmp_path / "checkpoint"), "--sample_dir",
             str(tmp_path / "samples"), "--log_dir", str(tmp_path / "logs")]
    assert main.main([*flags, "--epoch", "1", "--min_steps", "2", "--train"]) == 0
    return tmp_path, flags


def test_a_poor_g_with_a_plateaued_encoder_gets_the_warning_that_names_g(poor_gan, capsys):
    root, flags = poor_gan
    capsys.readouterr()
    assert main.main([*flags, "--train_encoder", "--encoder_check_every", "4",
                      "--encoder_patience", "2", "--encoder_min_steps", "8",
                      "--encoder_max_steps", "400"]) == 0
    out, err = capsys.readouterr()
    saved = json.loads((root / "checkpoint" / "rings_8_28_28" / "config.json").read_text())
    stop = saved["encoder"]["stop"]
    assert stop["reason"] == "plateau" and 8 <= stop["step"] < 400
    assert saved["encoder"]["steps"] == stop["step"] and stop["step"] % 4 == 0
    assert f"encoder stopped at step {stop['step']}" in out
    assert "E had stopped improving" in err and "train the GAN longer" in err
    assert "--gan wgan_gp" in err
    capsys.readouterr()
    assert main.main([*flags, "--train_encoder", "--encoder_check_every", "4",
                      "--encoder_patience", "2", "--encoder_min_steps", "8"]) == 0
    assert f"encoder already trained {stop['step']} steps" in capsys.readouterr().out
