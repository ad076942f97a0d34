"""Results of the latent-z search: ``SearchResult`` (per-image scores, final z and G(z) at the
snapshot steps, split and best-of for restarts and conditions), ``starting_z`` (each image's
own reproducible random start) and ``batch_starts`` (a batch's starts for one search)."""

import dataclasses

import numpy as np


@dataclasses.dataclass
class SearchResult:
    """Numpy results of the latent search for one batch of images."""

    score: np.ndarray
    residual: np.ndarray
    discrimination: np.ndarray
    z: np.ndarray
    snapshots: dict

    @property
    def final(self):
        """G(z) at the search's last step."""
        return self.snapshots[max(self.snapshots)]

    def split(self, parts):
        """``parts`` results of consecutive equal slices of the batch."""
        def cut(values):
            return np.split(values, parts)

        return [SearchResult(*fields, dict(zip(self.snapshots, snaps)))
                for *fields, snaps in zip(cut(self.score), cut(self.residual),
                                          cut(self.discrimination), cut(self.z),
                                          zip(*map(cut, self.snapshots.values())))]

    @classmethod
    def best_of(cls, results):
        """Per image, the result with the lowest score (best label of a conditional G, or start)."""
        best = np.argmin(np.stack([r.score for r in results]), axis=0)
        rows = np.arange(len(best))

        def pick(values):
            return np.stack(values)[best, rows]

        return cls(pick([r.score for r in results]), pick([r.residual for r in results]),
                   pick([r.discrimination for r in results]), pick([r.z for r in results]),
                   {step: pick([r.snapshots[step] for r in results])
                    for step in results[0].snapshots})


def starting_z(indices, z_dim, seed=0, restarts=1):
    """The latent search's U(-1, 1) starting z of each image index, reproducible from ``seed``.

    (batch, z_dim); with several ``restarts``, (restarts, batch, z_dim), the first as with one.
    """
    def draw(i, restart):
        key = [seed, i] if restart == 0 else [seed, i, restart]
        return np.random.default_rng(key).uniform(-1.0, 1.0, z_dim)

    z = np.array([[draw(i, r) for i in indices] for r in range(restarts)], np.float32)
    return z[0] if restarts == 1 else z


def batch_starts(indices, z_dim, seed, config):
    """The starting z of the images ``indices`` for the search ``config``: their own random
    starts (``starting_z``), or zeros that the search replaces by E(x)."""
    if config.restarts > 1 or config.z_init == "random":
        return starting_z(indices, z_dim, seed, config.restarts)
    return np.zeros((len(indices), z_dim), np.float32)
