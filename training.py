"""The training loop shared by the GAN and the encoder: epochs of compiled steps, progress bars,
TensorBoard losses, sample grids and checkpoints at their intervals, a stop between steps on
Ctrl-C or SIGTERM (after saving), and a stop on non-finite losses."""

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from runtime import is_chief, stop_requests


@dataclasses.dataclass
class Plateau:
    """A stopping rule: ``measure()`` (lower is better) is checked every ``every`` steps; the
    rule says stop once ``patience`` checks in a row have not lowered the best value by
    ``min_delta`` (relative), after at least ``floor`` steps, or at ``ceiling`` steps.
    ``history`` keeps (step, value) of every check and ``reason`` why it stopped."""

    measure: Callable
    every: int
    patience: int
    floor: int
    ceiling: int
    min_delta: float = 0.01
    best: float = math.inf
    stale: int = 0
    history: list = dataclasses.field(default_factory=list)
    reason: str | None = None

    def should_stop(self, step):
        """Whether to stop after ``step`` steps (measuring when a check is due)."""
        if step % self.every == 0:
            value = float(self.measure())
            self.history.append((step, round(value, 6)))
            if value < self.best * (1.0 - self.min_delta):
                self.best, self.stale = value, 0
            else:
                self.stale += 1
            if step >= self.floor and self.stale >= self.patience:
                self.reason = "plateau"
        if self.reason is None and step >= self.ceiling:
            self.reason = "ceiling"
        return self.reason is not None


class TrainingInterrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM after saving a checkpoint."""


class TrainingDiverged(Exception):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class Phase:
    """What ``run`` trains: the GAN or the encoder.

    ``step_fn`` is one compiled step on a distributed batch returning {name: loss} and
    advancing ``counter``; ``epoch_batches(epoch)`` the dataset of an epoch; ``save()`` writes a
    checkpoint and returns its path, ``latest()`` the newest one (None before the first);
    ``samples(epoch, index, writer)`` writes a sample grid; ``epoch_end(writer)`` adds text to
    the line printed after each epoch; ``plateau`` (a ``Plateau``), when given, may end the
    training before its last epoch.
    """

    label: str
    step_fn: Callable
    counter: tf.Variable
    epoch_batches: Callable
    save: Callable
    latest: Callable
    samples: Callable
    epoch_end: Callable = lambda writer: ""
    plateau: Plateau | None = None

    @property
    def steps_done(self):
        return int(self.counter.numpy())


def columns(rows):
    """{name: [values]} of a list of {name: value} rows."""
    return {name: [row[name] for row in rows] for name in (rows[0] if rows else {})}


def logged_step(phase, batch, writer, bar):
    """Runs one step; logs its losses to TensorBoard and the bar; stops on non-finite ones."""
    losses = {name: float(value) for name, value in phase.step_fn(*batch).items()}
    step = phase.steps_done
    if not all(math.isfinite(value) for value in losses.values()):
        kept = phase.latest()
        raise TrainingDiverged(
            f"losses became non-finite at step {step} ("
            + ", ".join(f"{k} {v}" for k, v in losses.items()) + "); "
            + (f"the last good checkpoint {kept} is kept" if kept else
               "no checkpoint was written")
            + ": lower --learning_rate")
    bar.set_postfix({name: f"{value:.4f}" for name, value in losses.items()})
    with writer.as_default(step=step):
        for name, value in losses.items():
            tf.summary.scalar(name, value)
    return losses


def epoch_line(phase, epoch, epochs, losses, writer, chief):
    """The line printed after an epoch: its step and mean losses (and ``phase.epoch_end``)."""
    return (f"{phase.label}epoch {epoch + 1}/{epochs} done: step {phase.steps_done}"
            + "".join(f", mean {name} {np.mean(values):.4f}"
                      for name, values in columns(losses).items())
            + (phase.epoch_end(writer) if chief else ""))


class Loop:
    """One run of a ``Phase``: its writer, and the step of the last sample grid written."""

    def __init__(self, phase, steps_per_epoch, epochs, strategy, train_config):
        self.phase, self.steps_per_epoch, self.epochs = phase, steps_per_epoch, epochs
        self.strategy, self.config = strategy, train_config
        self.chief = is_chief(strategy)
        self.writer = (tf.summary.create_file_writer(train_config.log_dir) if self.chief
                       else tf.summary.create_noop_writer())
        self.sampled = None

    def sample(self, epoch):
        """Writes a sample grid at the current step, once per step, on the chief only."""
        step = self.phase.steps_done
        if self.chief and self.sampled != step:
            self.phase.samples(epoch, step - epoch * self.steps_per_epoch, self.writer)
            self.sampled = step

    def epoch(self, epoch, stop):
        """The rest of ``epoch``'s steps; their losses. Raises KeyboardInterrupt on ``stop``."""
        phase, cfg = self.phase, self.config
        done = phase.steps_done - epoch * self.steps_per_epoch
        batches = self.strategy.experimental_distribute_dataset(
            phase.epoch_batches(epoch).take(self.steps_per_epoch - done))
        losses = []
        with tqdm(batches, total=self.steps_per_epoch, initial=done, unit="step", leave=False,
                  desc=f"{phase.label}epoch {epoch + 1}/{self.epochs}") as bar:
            for batch in bar:
                losses.append(logged_step(phase, batch, self.writer, bar))
                if phase.steps_done % cfg.sample_every == 0:
                    self.sample(epoch)
                if phase.steps_done % cfg.save_every == 0:
                    phase.save()
                if stop.is_set():
                    raise KeyboardInterrupt
                if phase.plateau is not None and phase.plateau.should_stop(phase.steps_done):
                    break
        return losses


def run(phase, steps_per_epoch, epochs, strategy, train_config):
    """Trains ``phase`` until ``epochs`` epochs of ``steps_per_epoch`` steps are done.

    Resumes from ``phase.counter``. Samples every ``sample_every`` steps and when stopped;
    saves every ``save_every`` steps, at the end and when stopped (also when an output cannot
    be written). The epoch-end report (a sample grid and the line of mean losses and
    ``phase.epoch_end``, the health check) is paced by steps: at the end of an epoch once
    ``sample_every`` steps have passed since the last one, and of the last epoch, so that
    short epochs (a few large images in patch mode) do not spend their time on it. Returns the
    loss values of each step of this run.
    """
    loop = Loop(phase, steps_per_epoch, epochs, strategy, train_config)
    history, unreported = [], []
    epoch = phase.steps_done // steps_per_epoch
    reported = phase.steps_done
    try:
        with stop_requests() as stop:
            while epoch < epochs:
                losses = loop.epoch(epoch, stop)
                history += losses
                unreported += losses
                stopped = phase.plateau is not None and phase.plateau.reason is not None
                if (phase.steps_done - reported >= train_config.sample_every
                        or epoch == epochs - 1 or stopped):
                    loop.sample(epoch)
                    tqdm.write(epoch_line(phase, epoch, epochs, unreported, loop.writer,
                                          loop.chief))
                    reported, unreported = phase.steps_done, []
                epoch += 1
                if stopped:
                    break
    except KeyboardInterrupt:
        loop.sample(min(epoch, epochs - 1))
        path = phase.save()
        raise TrainingInterrupted(f"interrupted at step {phase.steps_done}; saved {path}: "
                                  "run again to resume") from None
    except OSError:
        phase.save()  # an output that cannot be written loses no training
        raise
    phase.save()
    loop.writer.flush()
    return [tuple(step.values()) for step in history]
