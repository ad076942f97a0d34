"""Process concerns: a quiet TensorFlow start-up, and the memory the machine has.

TensorFlow's native code writes notices to the process's stderr while it loads and while it
first looks for devices (CUDA drivers missing, oneDNN on, CPU instructions, absl's 'All log
messages before absl::InitializeLog()'), before ``TF_CPP_MIN_LOG_LEVEL`` applies. A user's
one error line drowns in them. ``quiet_startup`` captures file descriptor 2 during the start-up
and writes back every line but those known notices, so real errors still show.
"""

import contextlib
import os
import re
import sys
import tempfile

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
