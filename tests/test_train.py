"""Training the DCGAN for real on tiny generated data: losses, checkpoints, resume, samples."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import write_images, write_mnist
from PIL import Image

import inputs
import main
import model
from config import ModelConfig, TrainConfig
from networks import Discriminator, Generator
from samples import sample_inputs

TINY = ["--gf_dim", 8, "--df_dim", 8, "--retries", 0, "--encoder_min_steps", 0, "--encoder_patience", 0]


def run_main(*argv):
    return main.main([str(a) for a in argv])


def small(dataset, size, *extra):
    """Flags of a fast run: a few steps of batch 8."""
    return ["--dataset", dataset, "--input_fname_pattern", "*.png", "--input_height", size,
            "--output_height", size, "--batch_size", 8, "--sample_every", 2, *TINY, *extra]


def checkpoint_steps(folder):
    return sorted(int(p.name.split("-")[1].split(".")[0]) for p in Path(folder).glob("*.index"))


def test_gray_28_trains_with_finite_losses_and_writes_checkpoint(workdir):
    write_images(workdir / "data" / "gray", 32, 28)
    source = inputs.folder_source(workdir / "data" / "gray", "*.png")
    assert source.channels == 1
    config = ModelConfig(28, 28, source.channels, gf_dim=8, df_dim=8)
    dcgan = model.DCGAN(config, workdir / "ckpt", TrainConfig(epochs=2, sample_every=4,
                                                                    sample_dir="s", log_dir="l"))
    dataset = inputs.make_dataset(source, inputs.ImageSpec((28, 28), (28, 28)), 8, shuffle_seed=0,
                                  drop_remainder=True)
    history = dcgan.train(dataset, 4, 8, sample_inputs(config, 8))
    assert len(history) == 8
    assert all(math.isfinite(d) and math.isfinite(g) for d, g in history)
    assert dcgan.steps_done == 8
    assert checkpoint_steps(workdir / "ckpt") == [8]
    assert json.loads((workdir / "ckpt" / "config.json").read_text())["c_dim"] == 1
    assert sorted(p.name for p in Path("s").glob("*.png")) == [
        "train_00_0004.png", "train_01_0004.png"]
    assert list(Path("l").glob("events.out.tfevents.*"))


def test_rgb_32_with_crop_trains_samples_and_resumes(workdir, capsys):
    write_images(workdir / "data" / "rgb", 32, 40, mode="RGB")
    flags = small("rgb", 32, "--crop", "--input_height", 36, "--epoch", 2, "--train")
    assert run_main(*flags) == 0
    folder = workdir / "checkpoint" / "rgb_8_32_32"
    # 32 images minus a held-out tenth (3) leaves 29 -> 3 steps per epoch.
    assert checkpoint_steps(folder) == [6]
    assert json.loads((folder / "config.json").read_text())["c_dim"] == 3
    # Every --sample_every (2) steps and at the end of every epoch (3 steps).
    assert sorted(p.name for p in (workdir / "samples").glob("*.png")) == [
        "train_00_0002.png", "train_00_0003.png", "train_01_0001.png", "train_01_0003.png"]
    grid = Image.open(workdir / "samples" / "train_01_0003.png")
    assert grid.size == (4 * 32, 2 * 32) and grid.mode == "RGB"
    capsys.readouterr()

    # --min_steps 13 is a floor over --epoch: ceil(13 / 3) = 5 epochs, 15 steps.
    resume = [*flags[:-3], "--epoch", 3, "--min_steps", 13, "--train"]
    assert run_main(*resume) == 0
    assert "resuming from step 6" in capsys.readouterr().out
    assert checkpoint_steps(folder) == [6, 15]
    restored = model.DCGAN(ModelConfig(32, 32, 3, gf_dim=8, df_dim=8), folder)
    assert restored.load() and restored.steps_done == 15
    assert int(restored.g_optim.iterations) == 30 and int(restored.d_optim.iterations) == 15
    assert run_main(*resume) == 0
    assert "already trained 15 steps" in capsys.readouterr().out


def test_mismatched_checkpoint_is_refused(workdir, capsys):
    write_images(workdir / "data" / "gray", 24, 28)
    assert run_main(*small("gray", 28, "--epoch", 1, "--train")) == 0
    capsys.readouterr()
    assert run_main(*small("gray", 28, "--epoch", 2, "--z_dim", 50, "--train")) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: checkpoint in") and "z_dim: checkpoint 100 vs now 50" in error
    assert error.count("\n") == 1


def test_anomaly_test_without_checkpoint_says_train_first(workdir, capsys):
    write_images(workdir / "data" / "gray", 24, 28)
    write_images(workdir / "test_data", 2, 28)
    assert run_main(*small("gray", 28, "--anomaly_test")) == 2
    assert "train a model first" in capsys.readouterr().err


def test_one_class_mnist_trains_the_conditional_model_on_chosen_digits(workdir, capsys):
    write_mnist(workdir / "data" / "mnist", train_per_digit=12)
    source = inputs.mnist_source(workdir / "data" / "mnist", "train", (1, 7))
    assert len(source) == 24 and set(source.classes) == {1, 7}
    flags = ["--dataset", "mnist", "--input_height", 28, "--output_height", 28,
             "--normal_class", "1,7", "--batch_size", 8, "--epoch", 1, *TINY]
    assert run_main(*flags, "--train") == 0
    assert "training on 22 images" in capsys.readouterr().out
    folder = workdir / "checkpoint" / "mnist_8_28_28_normal17"
    config = json.loads((folder / "config.json").read_text())
    assert (config["y_dim"], config["classes"]) == (10, [1, 7])
    assert checkpoint_steps(folder) == [2]
    dcgan = model.DCGAN(ModelConfig(28, 28, 1, y_dim=10, gf_dim=8, df_dim=8,
                                          classes=(1, 7)), folder)
    assert dcgan.load()
    _, labels = sample_inputs(dcgan.config, 6)
    assert labels.argmax(1).tolist() == [1, 7, 1, 7, 1, 7]
    # The same folder with another model: one line naming the difference, exit 2.
    assert run_main(*flags, "--y_dim", 0, "--train") == 2
    assert "y_dim: checkpoint 10 vs now 0" in capsys.readouterr().err
    assert run_main(*flags, "--y_dim", 0, "--checkpoint_dir", "unconditional", "--train") == 0
    config = json.loads((workdir / "unconditional" / folder.name / "config.json").read_text())
    assert (config["y_dim"], config["classes"]) == (0, [])


def test_model_config_checks_its_classes():
    assert ModelConfig(28, 28, 1, y_dim=10).conditions == tuple(range(10))
    assert ModelConfig(28, 28, 1, y_dim=10, classes=(3,)).conditions == (3,)
    assert ModelConfig(28, 28, 1).conditions == ()
    for classes in ((10,), (1,), [3]):
        with pytest.raises(ValueError, match="classes of a conditional model"):
            ModelConfig(28, 28, 1, y_dim=10 if classes != (1,) else 0, classes=classes)


def test_visualize_writes_grids_and_gifs(workdir):
    write_images(workdir / "data" / "gray", 24, 28)
    flags = small("gray", 28, "--z_dim", 4)
    assert run_main(*flags, "--epoch", 1, "--train") == 0
    assert run_main(*flags, "--visualize", "--generate_test_images", 9) == 0
    grids = list((workdir / "samples").glob("test_2*.png"))
    assert len(grids) == 1 and Image.open(grids[0]).size == (3 * 28, 3 * 28)
    assert run_main(*flags, "--visualize", "--visualize_option", 1) == 0
    assert len(list((workdir / "samples").glob("test_arange_*.png"))) == 4
    assert run_main(*flags, "--visualize", "--visualize_option", 4) == 0
    gif = Image.open(workdir / "samples" / "test_gif_merged.gif")
    assert gif.size == (2 * 28, 2 * 28)
    durations = []  # Pillow merges identical frames, adding up their durations.
    for index in range(gif.n_frames):
        gif.seek(index)
        durations.append(gif.info["duration"])
    assert sum(durations) == 8 * 1000


@pytest.mark.parametrize("size, expected", [
    ((28, 28), (28, 28)), ((64, 64), (64, 64)), ((48, 40), (48, 40)), ((9, 13), (9, 13))])
def test_generator_and_discriminator_handle_any_size(size, expected):
    config = ModelConfig(*size, c_dim=3, z_dim=8, gf_dim=4, df_dim=4)
    generator, discriminator = Generator(config), Discriminator(config)
    images = generator(np.zeros((2, 8), np.float32))
    logits, features = discriminator(images)
    assert images.shape == (2, *expected, 3)
    assert logits.shape == (2, 1) and features.shape[-1] == 32


def test_original_initialisers_and_parameter_count():
    config = ModelConfig(64, 64, 3)
    dcgan = model.DCGAN(config, "unused")
    g_kernel = dcgan.generator.deconvs[0].kernel.numpy()
    d_kernel = dcgan.discriminator.convs[0].kernel.numpy()
    assert abs(g_kernel.std() - 0.02) < 0.002 and abs(d_kernel.std() - 0.02 * 0.88) < 0.002
    assert np.abs(d_kernel).max() <= 0.04 + 1e-6
    # 64x64x3, z 100: G = linear 100->4*4*512 + deconvs 512->256->128->64->3, D = convs
    # 3->64->128->256->512 + linear 8192->1; batch norm counts gamma, beta, mean and variance.
    g = (101 * 8192 + 25 * (512 * 256 + 256 * 128 + 128 * 64 + 64 * 3)
         + 256 + 128 + 64 + 3 + 4 * (512 + 256 + 128 + 64))
    d = 25 * (3 * 64 + 64 * 128 + 128 * 256 + 256 * 512) + 64 + 128 + 256 + 512 + 8193 + 4 * (
        128 + 256 + 512)
    assert dcgan.generator.count_params() == g == 5_137_283
    assert dcgan.discriminator.count_params() == d == 4_318_337
