"""Training on several devices or machines with Keras' and TensorFlow's own engines.

`Distribution` turns ``train(distribute=...)`` / ``keras-pneumonia train --distribute``
into the engine that does the work; nothing here reimplements data parallelism.

- ``"none"``: one device (Keras' default placement: the first GPU, else the CPU).
- ``"mirrored"`` (TensorFlow backend): ``tf.distribute.MirroredStrategy`` over every
  GPU of this machine (or every logical CPU device when there is no GPU, which is
  how the tests run it).
- ``"multi-worker"`` (TensorFlow backend): ``tf.distribute.MultiWorkerMirroredStrategy``,
  one process per machine, each told the cluster and its own role by the
  ``TF_CONFIG`` environment variable. Worker 0 (or the ``chief``) writes the run
  folder; the others keep their checkpoints in ``RUN/workers/<index>`` so that
  they resume too.
- ``"data-parallel"`` (JAX backend): ``keras.distribution.DataParallel`` over every
  JAX device of this process.

In every case ``batch_size`` is the **global** batch: each of ``n`` replicas
computes ``batch_size / n`` images per step and the gradients are averaged, so one
epoch does the same work with the same learning rate as on one device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from keras_pneumonia.config import CHOICES

#: What `Distribution.create` (and ``train(distribute=...)``) takes.
DISTRIBUTE_CHOICES = CHOICES["distribute"]
_BACKENDS = {"mirrored": "tensorflow", "multi-worker": "tensorflow", "data-parallel": "jax"}


@dataclasses.dataclass
class Distribution:
    """The engine of one run: its scope, its replicas, and whether this process writes the results.

    Create it before anything else touches TensorFlow: ``MultiWorkerMirroredStrategy``
    must be set up before TensorFlow initialises its runtime.

    Attributes:
        kind: One of `DISTRIBUTE_CHOICES`.
        strategy: The ``tf.distribute`` strategy, or ``None``.
        replicas: Devices a batch is split over (all workers together).
        worker: This process's index among the workers (0 when alone).
        is_chief: Whether this process writes the run folder.
    """

    kind: str
    strategy: Any = None
    replicas: int = 1
    worker: int = 0
    is_chief: bool = True

    @classmethod
    def create(cls, kind: str = "none") -> Distribution:
        """Builds the strategy for ``kind``; errors name what is missing (backend, TF_CONFIG)."""
        import keras

        if kind not in DISTRIBUTE_CHOICES:
            raise ValueError(f"`distribute` must be one of {DISTRIBUTE_CHOICES}; received {kind!r}.")
        if kind == "none":
            return cls(kind)
        backend = keras.backend.backend()
        if _BACKENDS[kind] != backend:
            raise ValueError(
                f"distribute={kind!r} runs on the {_BACKENDS[kind]} backend; this Keras runs on {backend!r} "
                f"(set KERAS_BACKEND={_BACKENDS[kind]}, or choose "
                f"{'mirrored' if backend == 'tensorflow' else 'data-parallel' if backend == 'jax' else 'none'})."
            )
        if kind == "data-parallel":
            import jax

            devices = jax.devices()
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
            return cls(kind, replicas=len(devices))

        import tensorflow as tf

        if kind == "mirrored":
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
            strategy = tf.distribute.MirroredStrategy(devices=devices)
            return cls(kind, strategy, replicas=strategy.num_replicas_in_sync)

        cluster = _tf_config()
        task = cluster["task"]
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        has_chief = "chief" in cluster["cluster"]
        index = int(task.get("index", 0))
        is_chief = task["type"] == "chief" or (task["type"] == "worker" and index == 0 and not has_chief)
        worker = index + (1 if has_chief and task["type"] == "worker" else 0)
        return cls(kind, strategy, replicas=strategy.num_replicas_in_sync, worker=worker, is_chief=is_chief)

    def scope(self):
        """The context to build and compile the model in (a no-op for one device and for JAX)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def run_dir(self, output: str | Path) -> Path:
        """Where this process keeps its checkpoints: ``output`` for the chief, else ``output/workers/<i>``."""
        output = Path(output)
        return output if self.is_chief else output / "workers" / str(self.worker)

    def check_batch_size(self, batch_size: int) -> None:
        """The global batch must split evenly over the replicas."""
        if batch_size % self.replicas:
            raise ValueError(
                f"batch_size {batch_size} does not split evenly over {self.replicas} replicas "
                f"({self.kind}); choose a multiple of {self.replicas}."
            )

    def even_batches(self, dataset, n: int, batch_size: int):
        """``dataset`` (``n`` images in batches) with every batch splitting evenly over the devices.

        JAX lays each batch out over the devices, so with ``"data-parallel"`` a last
        batch that does not split evenly (523 images, 2 devices) would fail: it loses
        up to ``replicas - 1`` images (for a shuffled training split, other ones every
        epoch). TensorFlow's strategies split uneven batches themselves; for them, and
        on one device, the dataset is returned unchanged.
        """
        keep = n - n % self.replicas
        if self.kind != "data-parallel" or keep == n:
            return dataset
        import tensorflow as tf

        return dataset.unbatch().take(keep).batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def close(self) -> None:
        """Undoes a global setting (JAX's distribution) so that later models in this process are plain."""
        if self.kind == "data-parallel":
            import keras

            keras.distribution.set_distribution(None)

    def to_dict(self) -> dict[str, Any]:
        """What ``run.json`` records."""
        return {"kind": self.kind, "replicas": self.replicas, "worker": self.worker, "is_chief": self.is_chief}


def _tf_config() -> dict[str, Any]:
    """The parsed ``TF_CONFIG``, checked enough to give a clear error instead of a hang."""
    text = os.environ.get("TF_CONFIG")
    example = (
        'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\''
    )
    if not text:
        raise ValueError(
            f"distribute='multi-worker' needs the TF_CONFIG environment variable on every worker, e.g. {example}"
        )
    try:
        config = json.loads(text)
        workers = config["cluster"]
        task = config["task"]
        task["type"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"TF_CONFIG is not valid ({error!r}); expected e.g. {example}") from None
    if task["type"] not in workers:
        raise ValueError(f"TF_CONFIG's task type {task['type']!r} is not in its cluster {sorted(workers)}.")
    return config


class MultiWorkerFit:
    """Lets a `keras.Model` subclass ``fit`` under ``tf.distribute.MultiWorkerMirroredStrategy``.

    Keras 3's ``fit`` fails under that strategy in two places (keras-team/keras#20585):
    it averages the batch it peeks to build the model with ``strategy.reduce``, which
    that strategy cannot do for a batch of images, and it averages the scalar logs of
    each step over ``axis=0``, which a scalar lacks. Written by hand because no released
    Keras fixes it: only the peeked batch's shapes matter (one replica's part will do),
    and logs of shape ``(1,)`` average to the same scalar. Nothing changes without that
    strategy. Put it before `keras.Model` in the bases.
    """

    def _is_multi_worker(self) -> bool:
        strategy = getattr(self, "_distribute_strategy", None)
        if strategy is None:
            return False
        import tensorflow as tf

        return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if not (self._is_multi_worker() and iterator is not None):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        import keras

        strategy = self._distribute_strategy
        for _, _, batches in iterator:
            batch = next(batches)
            break
        local = keras.tree.map_structure(lambda value: strategy.experimental_local_results(value)[0], batch)
        with strategy.scope():
            self._symbolic_build(data_batch=local)

    def _logs_for_all_workers(self, logs):
        if not self._is_multi_worker():
            return logs
        import keras

        return {name: keras.ops.reshape(value, (1,)) for name, value in logs.items()}

    def train_step(self, *args, **kwargs):
        return self._logs_for_all_workers(super().train_step(*args, **kwargs))

    def test_step(self, *args, **kwargs):
        return self._logs_for_all_workers(super().test_step(*args, **kwargs))
