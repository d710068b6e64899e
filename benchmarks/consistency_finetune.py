"""Fine-tunes a model so that a tilted copy of each image, black corners and all, gets its answer.

    python benchmarks/consistency_finetune.py benchmarks/runs/v3-j/model_without_flag.keras \\
        --output runs/v3-m --epochs 3 [--weight 1.0] [--max-degrees 8] [--mirror-prob 0] \\
        [--copy-borders 0] [--copy-zoom 1] [--ema] [--mirror-average] [--seed 13]

An experiment of release v3, kept out of the library until it earns a place there: the
robustness report's 5-degree rotations flip 4-7% of decisions, and the experiment log
shows that the black corners do it, not the tilt, and that more tilted images in training
made it worse (v3-l). Here each training batch (``robust_reframe`` augmentation, the
run's patient-disjoint split, balanced class weights) is paired with a copy rotated by up
to ``--max-degrees`` at its own scale (black corners in view; a share ``--mirror-prob``
of the copies also mirrored, ``--copy-borders`` with collimation bars, and each zoomed in
by up to ``--copy-zoom``), and the loss is

    cross-entropy(batch) + cross-entropy(tilted copy) + weight * KL(p(batch) || p(tilted copy))

with the batch's probabilities held fixed in the KL term, so the tilted copy is pulled
towards the upright answer and not the other way round (a consistency loss, as in
Hendrycks et al.'s AugMix, 2020, and Zheng et al.'s stability training, 2016).
Written as a training loop of its own because Keras' ``fit`` takes one loss of one
output per example; the model, data, augmentation and schedule are the library's.

``--mirror-average`` trains the mean of the answers to each image and its mirror image
(the model is then meant to be scored so, ``experiments.py add ... --tta``): a mirrored
film cannot move such an answer.

The result is a ``model.keras`` (threshold 0.5, no out-of-distribution flag) and
``history.json`` in ``--output``; score it with
``python benchmarks/experiments.py add runs/v3-m/model.keras --name "v3-m @ 0.5" --threshold 0.5``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chest_xray_224"
logger = logging.getLogger("consistency_finetune")


def _model(source: str):
    import keras_pneumonia as kp
    from keras_pneumonia.training import copy_weights

    start = kp.PneumoniaCNN.from_pretrained(source, compile=False)
    model = kp.PneumoniaCNN.from_config({**start.get_config(), "ood": None, "threshold": 0.5})
    copy_weights(source, model)
    return model


def _data(model, seed: int):
    from keras_pneumonia.augmentation import Augmentation
    from keras_pneumonia.data import load_chest_xray

    data = load_chest_xray(DATA, **model.input_config.dataset_kwargs(), batch_size=32, validation_split=0.1, seed=1337)
    train = Augmentation.preset("robust_reframe").apply_to_dataset(data.train, seed=seed)
    return data, train


def _step_fn(model, optimizer, class_weight, tilt, weight: float, mirror_average: bool = False):
    import tensorflow as tf

    def probabilities(x):
        if not mirror_average:
            return model(x, training=True)
        # The mean of the image's and its mirror image's answers: the mirror then cannot move it.
        p = model(tf.concat([x, tf.reverse(x, axis=[2])], axis=0), training=True)
        p_x, p_mirror = tf.split(p, 2, axis=0)
        return 0.5 * (p_x + p_mirror)

    cross_entropy = tf.keras.losses.SparseCategoricalCrossentropy(reduction="none")
    weights = tf.constant([class_weight[i] for i in range(len(class_weight))], tf.float32)

    @tf.function
    def step(images, labels, seed):
        tilted = tilt(images, seed)
        both = tf.concat([images, tilted], axis=0)
        with tf.GradientTape() as tape:
            p = probabilities(both)
            p_plain, p_tilted = tf.split(p, 2, axis=0)
            w = tf.gather(weights, labels)
            ce = tf.reduce_mean(w * cross_entropy(labels, p_plain)) + tf.reduce_mean(
                w * cross_entropy(labels, p_tilted)
            )
            target = tf.stop_gradient(p_plain)
            kl = tf.reduce_mean(tf.reduce_sum(target * (tf.math.log(target + 1e-7) - tf.math.log(p_tilted + 1e-7)), 1))
            loss = ce + weight * kl
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return ce, kl

    return step


def finetune(
    source: str,
    output: Path,
    epochs: int,
    weight: float,
    max_degrees: float,
    seed: int,
    lr: float,
    limit_batches: int | None = None,
    mirror_prob: float = 0.0,
    copy_borders: float = 0.0,
    copy_zoom: float = 1.0,
    ema: bool = False,
    mirror_average: bool = False,
) -> dict:
    import keras
    import tensorflow as tf

    from keras_pneumonia.augmentation import PRESETS, Augmentation

    keras.utils.set_random_seed(seed)
    model = _model(source)
    data, train = _data(model, seed)
    if limit_batches:  # a smoke run
        train = train.take(limit_batches)
    tilt = Augmentation(
        **{
            **PRESETS["none"],
            "rotate_deg": max_degrees,
            "flip_prob": mirror_prob,
            "border_prob": copy_borders,
            "zoom": (1.0, copy_zoom),
        }
    )
    steps = sum(1 for _ in train) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(lr, steps)
    optimizer = keras.optimizers.Adam(schedule, use_ema=ema)
    step = _step_fn(model, optimizer, data.class_weight, tilt, weight, mirror_average)
    history, started, n = [], time.monotonic(), 0
    for epoch in range(epochs):
        totals, batches = [0.0, 0.0], 0
        for images, labels in train:
            ce, kl = step(images, labels, tf.constant([seed, n], tf.int64))
            totals, batches, n = [totals[0] + float(ce), totals[1] + float(kl)], batches + 1, n + 1
        history.append({"epoch": epoch, "cross_entropy": totals[0] / batches, "kl": totals[1] / batches})
        logger.info("epoch %d: %s (%.1f min)", epoch, history[-1], (time.monotonic() - started) / 60)
    if ema:  # the weights' moving average becomes the model's weights, as fit's EMA does at its end
        optimizer.finalize_variable_values(model.trainable_variables)
    output.mkdir(parents=True, exist_ok=True)
    partial = output / "model.keras.partial.keras"
    model.save(partial)
    partial.replace(output / "model.keras")  # never a half-written model.keras
    run = {
        "command": " ".join(["python", *sys.argv]),
        "source": source,
        "epochs": epochs,
        "weight": weight,
        "max_degrees": max_degrees,
        "mirror_prob": mirror_prob,
        "copy_borders": copy_borders,
        "copy_zoom": copy_zoom,
        "ema": ema,
        "mirror_average": mirror_average,
        "seed": seed,
        "learning_rate": lr,
        "history": history,
        "wall_time_s": round(time.monotonic() - started, 1),
        "steps": n,
    }
    (output / "history.json").write_text(json.dumps(run, indent=1) + "\n")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="the starting model (.keras file or preset name)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--weight", type=float, default=1.0, help="weight of the consistency (KL) term")
    parser.add_argument("--max-degrees", type=float, default=8.0, help="largest tilt of the paired copy")
    parser.add_argument("--mirror-prob", type=float, default=0.0, help="share of paired copies also mirrored")
    parser.add_argument("--copy-borders", type=float, default=0.0, help="share of copies with collimation bars")
    parser.add_argument("--copy-zoom", type=float, default=1.0, help="largest zoom-in (crop) of a copy")
    parser.add_argument("--ema", action="store_true", help="keep a moving average of the weights (as train --ema)")
    parser.add_argument(
        "--mirror-average",
        action="store_true",
        help="train the mean of each image's and its mirror image's answer (score with experiments.py --tta)",
    )
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--limit-batches", type=int, help="train on this many batches per epoch (a smoke run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run = finetune(
        args.source,
        args.output,
        args.epochs,
        args.weight,
        args.max_degrees,
        args.seed,
        args.learning_rate,
        args.limit_batches,
        args.mirror_prob,
        args.copy_borders,
        args.copy_zoom,
        args.ema,
        args.mirror_average,
    )
    print(json.dumps({k: run[k] for k in ("history", "wall_time_s", "steps")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
