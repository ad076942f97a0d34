"""Checkpoint folders: one ``tf.train.Checkpoint`` per folder with its manager, restoring the
newest intact checkpoint (a damaged newest one or a lost 'checkpoint' index file loses no
training), collective saving under tf.distribute, and the model's ``config.json``."""

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import tensorflow as tf

from runtime import CheckpointError

KEEP = 3
"""Checkpoints kept per folder."""


def checkpoint_candidates(manager, folder):
    """The checkpoints in ``folder``, newest first: the manager's latest, then every ckpt-N
    whose index file is there (so that a lost 'checkpoint' index file loses nothing)."""
    numbers = sorted((int(p.name[5:-6]) for p in Path(folder).glob("ckpt-*.index")
                      if p.name[5:-6].isdigit()), reverse=True)
    paths = [str(Path(folder) / f"ckpt-{n}") for n in numbers]
    latest = manager.latest_checkpoint
    if latest is not None:
        paths = [latest] + [p for p in paths if Path(p) != Path(latest)]
    return paths


def fresh_manager(checkpoint, folder):
    """A CheckpointManager of ``folder`` that rotates only the checkpoints this run writes:
    after a recovery the older ones stay (their index is kept as checkpoint.before-recovery)."""
    index = Path(folder) / "checkpoint"
    if index.exists():
        os.replace(index, index.with_name("checkpoint.before-recovery"))
    return tf.train.CheckpointManager(checkpoint, str(folder), KEEP)


def restore(checkpoint, path):
    """Restores ``path`` into ``checkpoint``, every variable of it; ``CheckpointError`` if not.

    Checkpoints of this port's first versions held the trainable weights only (no batch-norm
    statistics, no 'models/' variables): they are refused with a line that says so.
    """
    try:
        if not any(name.startswith("models/") for name, _ in tf.train.list_variables(path)):
            raise CheckpointError(f"cannot restore {path}: it was written by an early version "
                                  "of this port without batch-norm statistics; train again "
                                  "into another --checkpoint_dir")
        checkpoint.restore(path).assert_existing_objects_matched()
    except (AssertionError, IndexError, ValueError, tf.errors.OpError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"cannot restore {path}: {reason}") from error


class CheckpointFolder:
    """A ``tf.train.Checkpoint`` saved into, and restored from, one folder.

    ``warnings`` (a list shared with the owner) gets a line for each checkpoint passed over.
    """

    def __init__(self, checkpoint, folder, warnings):
        self.checkpoint = checkpoint
        self.folder = Path(folder)
        self.manager = tf.train.CheckpointManager(checkpoint, str(self.folder), KEEP)
        self.warnings = warnings

    @property
    def latest(self):
        """The newest checkpoint's path (None before the first)."""
        return self.manager.latest_checkpoint

    def holds_checkpoints(self):
        """Whether the folder holds any checkpoint (indexed or not)."""
        return bool(checkpoint_candidates(self.manager, self.folder))

    def restore_newest(self):
        """Restores the newest checkpoint that restores; False when the folder holds none.

        Each one passed over, and a lost index file, adds a warning, and the manager then
        rotates only the checkpoints written from now on. Raises ``CheckpointError`` when none
        restores.
        """
        candidates = checkpoint_candidates(self.manager, self.folder)
        problems = []
        for path in candidates:
            try:
                restore(self.checkpoint, path)
            except CheckpointError as error:
                problems.append(str(error))
                continue
            indexed = (self.folder / "checkpoint").exists()
            if problems:
                self.warnings.append(f"warning: {problems[0]}; restored {Path(path).name}, "
                                     "the newest intact checkpoint, instead")
            elif not indexed:
                self.warnings.append(f"warning: the 'checkpoint' index file in {self.folder} "
                                     f"is missing: restored {Path(path).name}, the newest "
                                     "checkpoint there")
            if problems or not indexed:
                self.manager = fresh_manager(self.checkpoint, self.folder)
            return True
        if problems:
            raise CheckpointError(f"{problems[0]}; no older checkpoint in {self.folder} "
                                  "restores either: move the folder away to start afresh")
        return False

    def save(self, number, chief):
        """Writes checkpoint ``number``; its path. Every worker must call this (saving is
        collective); non-chief workers write into a temporary folder removed at once."""
        if not chief:
            with tempfile.TemporaryDirectory() as scratch:
                tf.train.CheckpointManager(self.checkpoint, scratch, 1).save()
            return None
        return self.manager.save(checkpoint_number=number)

    def move_into(self, target, also=("checkpoint", "config.json")):
        """Moves the managed checkpoints and the files named in ``also`` into ``target``."""
        target.mkdir(parents=True, exist_ok=True)
        prefixes = [Path(path).name for path in self.manager.checkpoints]
        for path in self.folder.iterdir():
            if path.is_file() and (path.name in also or path.name.split(".")[0] in prefixes):
                os.replace(path, target / path.name)
        return target


def read_model_config(path, config):
    """``path``'s contents (config.json) as a dict, {} when it is not there.

    Raises ``CheckpointError`` when it is not a JSON object or describes another model than
    ``config`` (a ``ModelConfig``).
    """
    path = Path(path)
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}): restore it "
                              "or move the folder away") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds {type(saved).__name__}, not a JSON "
                              "object: restore it or move the folder away")
    wanted = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as lists
    defaults = {field.name: field.default for field in dataclasses.fields(config)
                if field.default is not dataclasses.MISSING}
    differing = sorted(k for k in wanted
                       if saved.get(k, defaults.get(k, wanted[k])) != wanted[k])
    if differing:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)} vs now {wanted.get(k)}"
                            for k in differing)
        raise CheckpointError(f"checkpoint in {path.parent} was built with another "
                              f"model ({details}): pass the flags it was trained with, or "
                              "use another --checkpoint_dir")
    return saved
