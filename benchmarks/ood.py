"""Out-of-distribution flags compared: Mahalanobis and k-nearest neighbours, at one depth and at several.

    python benchmarks/ood.py MODEL [--data ../shared/data] [--json benchmarks/ood.json]

MODEL is a preset name or a ``.keras`` file. Everything is fitted on the official
training split only, split by patient as training splits it
(``load_chest_xray(validation_split=0.1, seed=1337)``): the statistics (or the
neighbours) on its train part, the threshold at the 98% quantile of its validation
part (``keras_pneumonia.ood.DEFAULT_QUANTILE``; the rates at other quantiles are
recorded too). Features: the mean and standard deviation of each channel
(``keras_pneumonia.ood.pool``) of the last block, the last three, all five, or every
ReLU (both of each block); and all five with the 2 x 2 grid means
(``keras_pneumonia.ood.pool_grid``) of the last two blocks or of all five; the input's
8 x 8 thumbnail (``keras_pneumonia.ood.pool_input``) alone and with every ReLU.
Then each method's flag rate is measured on train, validation, test_dev
(used for choices) and external_dev (used for choices; adults from other hospitals,
many of them figures from papers), with the model's accuracy on flagged and
unflagged images, and the AUROC of the score between test_dev and external_dev.
Nothing is fitted on test_dev or external_dev.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]


def knn_scores(train: np.ndarray, query: np.ndarray, k: int = 10) -> np.ndarray:
    """Distance to the k-th nearest training feature, both L2-normalised (Sun et al., ICML 2022)."""

    def normed(a):
        return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)

    train, query = normed(train), normed(query)
    out = []
    for start in range(0, len(query), 512):
        distances = 2.0 - 2.0 * query[start : start + 512] @ train.T
        out.append(np.sqrt(np.maximum(np.partition(distances, k - 1, axis=1)[:, k - 1], 0.0)))
    return np.concatenate(out)


def joint_features(model, pooled, grid, input_grid):
    """One Keras model: ``[probabilities, pool(layer) for pooled..., pool_grid(layer) for grid..., pool_input]``."""
    import keras

    from keras_pneumonia.ood import pool, pool_grid, pool_input

    outputs = [pool(model.get_layer(name).output) for name in pooled]
    outputs += [pool_grid(model.get_layer(name).output) for name in grid]
    outputs += [pool_input(model.inputs[0], input_grid)]
    return keras.Model(model.inputs, [model.outputs[0], *outputs])


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    from keras_pneumonia.evaluation import EvaluationReport

    labels = np.r_[np.zeros(len(negatives), int), np.ones(len(positives), int)]
    scores = np.r_[negatives, positives]
    return float(EvaluationReport.from_predictions(labels, scores, 0.5, ["in", "out"]).auc)


def flag_row(model, scores, probs, labels, layers, dims, quantile) -> dict:
    """Flag rates (and accuracy on flagged / unflagged images) of one score, thresholded on validation."""
    threshold = float(np.quantile(scores["validation"], quantile))
    row = {"layers": layers, "dims": dims, "threshold": threshold}
    for name in scores:
        flagged = scores[name] > threshold
        correct = model.decide(np.c_[1 - probs[name], probs[name]]) == labels[name]
        row[name] = {
            "n": int(len(flagged)),
            "flagged": float(flagged.mean()),
            "accuracy_flagged": float(correct[flagged].mean()) if flagged.any() else None,
            "accuracy_unflagged": float(correct[~flagged].mean()) if (~flagged).any() else None,
        }
    # Seen, not chosen by: how the flag rates move with the quantile.
    row["by_quantile"] = {
        str(q): {n: float(np.mean(scores[n] > np.quantile(scores["validation"], q))) for n in scores}
        for q in (0.95, 0.97, 0.98, 0.99, 0.995)
    }
    row["auroc_test_dev_vs_external_dev"] = auroc(scores["test_dev"], scores["external_dev"])
    print(
        f"{row['dims']:5d} dims  flagged: train {row['train']['flagged']:.1%}  val {row['validation']['flagged']:.1%}  "
        f"test_dev {row['test_dev']['flagged']:.1%}  external_dev {row['external_dev']['flagged']:.1%}  "
        f"AUROC {row['auroc_test_dev_vs_external_dev']:.3f}",
        flush=True,
    )
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import keras_pneumonia as kp
    from keras_pneumonia.data import load_image_folder
    from keras_pneumonia.ood import DEFAULT_QUANTILE as QUANTILE
    from keras_pneumonia.ood import fit_mahalanobis, mahalanobis_scores

    model = kp.PneumoniaCNN.from_preset(args.model)
    reading = model.input_config.dataset_kwargs()
    started = time.time()
    data = kp.load_chest_xray(
        args.data / "chest_xray_224", **reading, class_names=model.class_names, validation_split=0.1, seed=1337
    )
    sets = {"train": data.train, "validation": data.val}
    images = {}
    for name, folder in (("test_dev", "chest_xray_224/test_dev"), ("external_dev", "external_dev")):
        x, y, _ = load_image_folder(args.data / folder, **reading, class_names=model.class_names)
        images[name] = (x, y)

    blocks = len(model.filters)
    last_relus = [f"block{b}_relu{model.convs_per_block}" for b in range(1, blocks + 1)]
    every_relu = [f"block{b}_relu{c}" for b in range(1, blocks + 1) for c in range(1, model.convs_per_block + 1)]
    # One pass over every set: the probabilities, `pool` of every ReLU, `pool_grid` of each block's last.
    keys = [("pool", name) for name in every_relu] + [("grid", name) for name in last_relus] + [("input", "8x8")]
    extractor = joint_features(model, every_relu, last_relus, 8)
    feats, labels, probs = {}, {}, {}
    for name, dataset in sets.items():
        chunks, ys = [], []
        for batch in dataset:
            chunks.append([np.asarray(a) for a in extractor.predict_on_batch(np.asarray(batch[0]))])
            ys.append(np.asarray(batch[1]))
        feats[name] = [np.concatenate([c[i] for c in chunks]) for i in range(len(keys) + 1)]
        labels[name] = np.concatenate(ys)
    for name, (x, y) in images.items():
        feats[name] = [np.asarray(a) for a in extractor.predict(x, batch_size=64, verbose=0)]
        labels[name] = y
    for name in feats:
        probs[name] = feats[name][0][:, -1]
        feats[name] = dict(zip(keys, feats[name][1:]))
    pooled = {
        name: [("pool", layer) for layer in layers]
        for name, layers in (
            ("last", last_relus[-1:]),
            ("three", last_relus[-3:]),
            ("all", last_relus),
            ("every_relu", every_relu),
        )
    }
    depths = {
        **pooled,
        "all+grid_last_two": pooled["all"] + [("grid", layer) for layer in last_relus[-2:]],
        "all+grid_all": pooled["all"] + [("grid", layer) for layer in last_relus],
        "every_relu+grid_all": pooled["every_relu"] + [("grid", layer) for layer in last_relus],
        "input_8x8": [("input", "8x8")],
        "every_relu+input_8x8": pooled["every_relu"] + [("input", "8x8")],
    }
    results: dict = {"model": args.model, "quantile": QUANTILE, "methods": {}}
    for depth, chosen in depths.items():
        layers = [f"{kind}:{layer}" for kind, layer in chosen]
        f = {name: np.concatenate([feats[name][key] for key in chosen], axis=1) for name in feats}
        means, whitening = fit_mahalanobis(f["train"], labels["train"])
        scorers = {
            "mahalanobis": lambda a, means=means, whitening=whitening: mahalanobis_scores(a, means, whitening),
            "knn10": lambda a, train=f["train"]: knn_scores(train, a),
        }
        for method, score in scorers.items():
            scores = {name: score(a) for name, a in f.items()}
            print(f"{method}/{depth}: ", end="")
            row = flag_row(model, scores, probs, labels, layers, int(f["train"].shape[1]), QUANTILE)
            results["methods"][f"{method}/{depth}"] = row
    # One Mahalanobis distance per block, each divided by its own validation median, combined
    # by the sum or the maximum: an image far from the training images at one depth is not
    # averaged away by the other depths' 992 - d dimensions.
    per_block = {}
    for b in range(1, blocks + 1):
        key = ("pool", last_relus[b - 1])
        means, whitening = fit_mahalanobis(feats["train"][key], labels["train"])
        raw = {name: mahalanobis_scores(feats[name][key], means, whitening) for name in feats}
        scale = float(np.median(raw["validation"]))
        per_block[b] = {name: r / scale for name, r in raw.items()}
    combined = {
        "mahalanobis_block_sum": {n: np.sum([per_block[b][n] for b in per_block], axis=0) for n in feats},
        "mahalanobis_block_max": {n: np.max([per_block[b][n] for b in per_block], axis=0) for n in feats},
    }
    dims = int(sum(feats["train"][("pool", layer)].shape[1] for layer in last_relus))
    for method, scores in combined.items():
        print(f"{method}/all: ", end="")
        results["methods"][f"{method}/all"] = flag_row(model, scores, probs, labels, last_relus, dims, QUANTILE)
    results["seconds"] = round(time.time() - started, 1)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
