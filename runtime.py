"""Process concerns: a quiet TensorFlow start-up, the memory the machine has, tf.distribute
strategies and the chief, stop requests (SIGINT, SIGTERM), the checkpoint folder's lock and
the lock of an output path (results, exports).

TensorFlow's native code writes notices to the process's stderr while it loads and while it
first looks for devices (CUDA drivers missing, oneDNN on, CPU instructions, absl's 'All log
messages before absl::InitializeLog()'), before ``TF_CPP_MIN_LOG_LEVEL`` applies. A user's
one error line drowns in them. ``quiet_startup`` captures file descriptor 2 during the start-up
and writes back every line but those known notices, so real errors still show.
"""

import contextlib
import fcntl
import functools
import os
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path

STARTUP_NOTICES = re.compile(
    r"cudart_stub\.cc|cuda_platform\.cc|cuda_executor\.cc|cuda_diagnostics|cuInit|"
    r"absl::InitializeLog|oneDNN custom operations|cpu_feature_guard\.cc|"
    r"To enable the following instructions|rebuild TensorFlow with the appropriate compiler|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation_placer|TF-TRT Warning|"
    r"This TensorFlow binary is optimized")
"""TensorFlow's start-up notices on a machine without a GPU, by the text of their lines."""


def is_startup_notice(line):
    """Whether ``line`` is one of TensorFlow's start-up notices (dropped), not a real error."""
    return bool(STARTUP_NOTICES.search(line))


@contextlib.contextmanager
def quiet_startup():
    """Within: what is written to file descriptor 2 is held back; afterwards every line but
    TensorFlow's start-up notices is written to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines()
                    if line.strip() and not is_startup_notice(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


def import_tensorflow():
    """Imports TensorFlow and lets it find its devices, quietly; returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_startup():
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf


def available_memory(meminfo="/proc/meminfo"):
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None where
    the system does not say."""
    try:
        with open(meminfo, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class CheckpointError(Exception):
    """A checkpoint that is missing, in use, or was built for another model shape."""


@functools.cache
def make_strategy(name="default", devices=None):
    """The tf.distribute strategy called ``name`` (default, mirrored or multiworker).

    One per process and configuration: strategies own process-wide collective keys, and two
    alike would collide.
    """
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices.split(",") if devices else None)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def unknown_devices(devices):
    """The names in the comma list ``devices`` that name no device of this machine, with the
    names it has: ([unknown], [known])."""
    import tensorflow as tf

    known = [device.name for device in tf.config.list_logical_devices()]
    canonical = {}
    for name in known:
        spec = tf.DeviceSpec.from_string(name)
        canonical[(spec.device_type.lower(), spec.device_index)] = name
    unknown = []
    for name in devices.split(","):
        try:
            spec = tf.DeviceSpec.from_string(name.strip())
        except ValueError:
            unknown.append(name)
            continue
        key = ((spec.device_type or "").lower(), spec.device_index or 0)
        if key not in canonical:
            unknown.append(name)
    return unknown, known


def is_chief(strategy):
    """False only for the non-chief workers of a multi-worker strategy."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return not has_chief and resolver.task_type == "worker" and resolver.task_id == 0


@contextlib.contextmanager
def stop_requests():
    """An Event set by the first SIGINT or SIGTERM (a second SIGINT interrupts at once).

    Training checks it between steps, so a checkpoint is never cut short mid-write.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def folder_lock(folder):
    """Holds an exclusive OS lock (``flock``) on ``folder``/.lock: one writer at a time.

    The kernel releases it when the process ends, however it ends. Raises ``CheckpointError``
    at once when another process holds it (naming that process), or when ``folder`` cannot be
    a folder.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"cannot use {folder} as a checkpoint folder: "
                              f"{error.strerror or error} ({error.filename})") from None
    descriptor = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode(errors="replace").strip()
            raise CheckpointError(
                f"checkpoint folder {folder} is in use by another training "
                f"({holder or 'another process'}): wait for it or use another "
                "--checkpoint_dir") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()}: {' '.join(sys.argv)}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)


class FolderInUse(Exception):
    """An output path that another process is writing now."""


@contextlib.contextmanager
def output_lock(path, what):
    """Holds an exclusive OS lock on the folder that holds ``path`` (the folder itself, so
    nothing is left behind): one process writes ``path`` or its hidden temporaries at a time.

    Raises ``FolderInUse`` at once, naming ``what``, when another process holds it. Within, the
    hidden temporaries that a killed earlier writer left beside ``path`` may be removed.
    """
    parent = Path(path).parent
    parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(f"{path} is being written by another {what} now: wait for it "
                              "or choose another path") from None
        yield
    finally:
        os.close(descriptor)


def on_replicas(strategy, fn):
    """``fn`` run on contiguous slices of its batch per replica, outputs gathered in order.

    Each replica (over all workers) computes its own slice; every process gets all outputs
    back. With one replica this is ``fn`` itself.
    """
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return fn

    def replica_fn(*batch):
        context = tf.distribute.get_replica_context()
        bounds = tf.range(replicas + 1) * tf.shape(batch[0])[0] // replicas
        replica = context.replica_id_in_sync_group
        first, last = bounds[replica], bounds[replica + 1]
        outputs = fn(*(tensor[first:last] for tensor in batch))
        return [context.all_gather(output, axis=0) for output in outputs]

    @tf.function(reduce_retracing=True)
    def run(*batch):
        outputs = strategy.run(replica_fn, args=batch)
        return [strategy.experimental_local_results(output)[0] for output in outputs]

    return run


class ReentrantFolderLock:
    """``folder_lock`` of one folder that the holding process may take again (nested)."""

    def __init__(self, folder):
        self.folder = folder
        self.depth = 0

    @contextlib.contextmanager
    def held(self):
        """Within: this process holds the lock (taken at the outermost level only)."""
        if self.depth:
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
            return
        with folder_lock(self.folder):
            self.depth = 1
            try:
                yield
            finally:
                self.depth = 0
