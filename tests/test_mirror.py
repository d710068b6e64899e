"""`Unmirror`: an image and its mirror image reach the classifier as one image; `fit` learns which side is up."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pneumonia as kp
from conftest import KAGGLE, TINY
from keras_pneumonia import mirror
from keras_pneumonia.cli import main


def _mirror(x):
    return np.ascontiguousarray(x[:, :, ::-1])


def test_an_image_and_its_mirror_image_become_the_same_image():
    x = np.random.default_rng(0).uniform(0, 255, (6, 48, 40, 1)).astype("float32")
    layer = mirror.Unmirror()
    out = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_array_equal(out, keras.ops.convert_to_numpy(layer(_mirror(x))))
    # Each output is the image or its mirror image, nothing in between.
    for image, result in zip(x, out, strict=True):
        assert np.array_equal(result, image) or np.array_equal(result, image[:, ::-1])


def test_a_model_that_unmirrors_answers_a_mirror_image_as_the_image_and_saves_the_layer(tmp_path):
    model = kp.PneumoniaCNN(**{**TINY, "image_size": 64}, crop_borders=True, unmirror=True)
    x = np.random.default_rng(1).integers(0, 256, (5, 64, 64, 1)).astype("uint8")
    x[:, :, :7] = 0  # a black bar on one side only: the border cut comes first, then the mirror
    answer = model.predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(_mirror(x), verbose=0), answer, atol=1e-6)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.unmirror and loaded.get_config()["unmirror"] is True
    for a, b in zip(model.get_layer("unmirror").weights, loaded.get_layer("unmirror").weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), answer, atol=1e-6)
    assert not kp.PneumoniaCNN(**TINY).get_config()["unmirror"]  # off unless asked for


def _lopsided(n, seed, size=64):
    """Noise with a bright patch low on the right: an 'upright' image whose side can be told."""
    rng = np.random.default_rng(seed)
    x = rng.normal(90, 20, (n, size, size, 1))
    for image in x:
        top, left = rng.integers(size // 2, size - 20), rng.integers(size // 2 + 4, size - 16)
        image[top : top + 16, left : left + 12] += 110
    labels = rng.integers(0, 2, n)
    return tf.data.Dataset.from_tensor_slices((np.clip(x, 0, 255).astype("uint8"), labels)).batch(32)


def test_fit_learns_which_side_is_up_and_keeps_the_classifier():
    model = kp.PneumoniaCNN(**{**TINY, "image_size": 64})
    fitted, scores = mirror.fit(model, _lopsided(256, 0), _lopsided(64, 1), epochs=8, seed=3)
    assert scores["upright"] >= 0.95 and scores["mirrored"] >= 0.95, scores
    assert fitted.unmirror and not model.unmirror
    upright = np.concatenate([x for x, _ in _lopsided(64, 2)])
    # Upright images pass unchanged, so the classifier's answer is the old model's...
    np.testing.assert_allclose(fitted.predict(upright, verbose=0), model.predict(upright, verbose=0), atol=1e-5)
    # ...and their mirror images are turned back first.
    np.testing.assert_allclose(
        fitted.predict(_mirror(upright), verbose=0), model.predict(upright, verbose=0), atol=1e-5
    )


@pytest.mark.slow
def test_fit_unmirror_command_writes_a_model_with_the_layer_and_keeps_the_flag(tmp_path, capsys):
    out = tmp_path / "unmirrored.keras"
    args = ["fit-unmirror", str(KAGGLE), "--weights", "pneumonia_cnn_v3", "--output", str(out), "--epochs", "1"]
    assert main([*args, "--validation-split", "0.3"]) == 0
    assert "Unmirror layer trained on" in capsys.readouterr().out
    model = keras.saving.load_model(out)
    source = kp.PneumoniaCNN.from_pretrained("pneumonia_cnn_v3")
    assert model.unmirror and model.ood == source.ood
    np.testing.assert_array_equal(np.asarray(model.ood_detector.means), np.asarray(source.ood_detector.means))
    assert main([*args, "--validation-split", "0.3"]) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("format", ["saved_model", "litert", "onnx"])
def test_the_unmirror_layer_exports_and_stays_mirror_invariant(format, tmp_path):
    from keras_pneumonia.export import export_model, run_exported

    if keras.backend.backend() != "tensorflow":
        pytest.skip("exports need TensorFlow")
    if format == "onnx":
        pytest.importorskip("tf2onnx", reason="ONNX export needs the [export] extra (nox -s extras)")
        pytest.importorskip("onnxruntime", reason="ONNX export needs the [export] extra (nox -s extras)")
    model = kp.PneumoniaCNN(**{**TINY, "image_size": 64}, crop_borders=True, unmirror=True)
    out = tmp_path / {"saved_model": "saved_model", "litert": "m.tflite", "onnx": "m.onnx"}[format]
    export_model(model, out, format=format)
    x = np.random.default_rng(4).integers(0, 256, (3, 64, 64, 1)).astype("uint8")
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(run_exported(out, x), expected, atol=1e-5)
    np.testing.assert_allclose(run_exported(out, _mirror(x)), expected, atol=1e-5)


def test_grad_cam_lays_the_map_of_a_film_turned_round_over_the_film_as_given():
    model = kp.PneumoniaCNN(**{**TINY, "image_size": 64}, unmirror=True)
    x = np.random.default_rng(5).integers(0, 256, (4, 64, 64, 1)).astype("uint8")
    turned = mirror.turned_round(model, x)
    assert turned.tolist() == (~mirror.turned_round(model, _mirror(x))).tolist()
    maps, mirrored_maps = kp.gradcam(model, x), kp.gradcam(model, _mirror(x))
    assert not np.allclose(maps, maps[:, :, ::-1], atol=1e-3)  # a map that says where, not a symmetric one
    np.testing.assert_allclose(mirrored_maps, maps[:, :, ::-1], atol=1e-5)
    assert not mirror.turned_round(kp.PneumoniaCNN(**TINY), x[:, :32, :32]).any()


def test_the_layer_is_frozen_in_the_model_so_training_the_classifier_leaves_it(tmp_path):
    model = kp.PneumoniaCNN(**TINY, unmirror=True)
    layer = model.get_layer("unmirror")
    before = [np.array(w) for w in layer.get_weights()]
    assert not layer.trainable and all(not w.trainable for w in layer.weights)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.5))
    x = np.random.default_rng(6).integers(0, 256, (8, 32, 32, 1)).astype("uint8")
    model.fit(x, np.arange(8) % 2, epochs=2, verbose=0)
    for a, b in zip(before, layer.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    model.save(tmp_path / "m.keras")
    assert not keras.saving.load_model(tmp_path / "m.keras").get_layer("unmirror").trainable


def test_init_weights_keeps_the_layer_only_when_asked_and_says_how(tmp_path, capsys):
    from keras_pneumonia import training

    source = kp.PneumoniaCNN(**TINY, unmirror=True)
    source.save(tmp_path / "start.keras")
    with pytest.raises(ValueError, match="pass --unmirror to keep that layer"):
        training.copy_weights(tmp_path / "start.keras", kp.PneumoniaCNN(**TINY))
    kept = kp.PneumoniaCNN(**TINY, unmirror=True)
    training.copy_weights(tmp_path / "start.keras", kept)
    for a, b in zip(source.get_layer("unmirror").weights, kept.get_layer("unmirror").weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Without a model to copy it from, the layer would be untrained: the command says what to do instead.
    argv = ["train", str(KAGGLE), "--output", str(tmp_path / "run"), "--unmirror"]
    assert main(argv) == 2
    assert "keras-pneumonia fit-unmirror" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
