"""ImageNet backbones from keras.applications: built, fed raw grayscale pixels, frozen, saved, fine-tuned.

ImageNet weights cannot be downloaded here: the backbones are built with
``backbone_weights=None``, and loading by path goes through keras.applications' real
loading code with a weights file the test writes itself.
"""

import json
import warnings

import keras
import numpy as np
import pytest

import keras_pneumonia as kp
from keras_pneumonia.backbones import BACKBONES
from keras_pneumonia.data import load_image_folder
from keras_pneumonia.training import fine_tune

SIZE = 64  # the smallest input every backbone accepts is 32


@pytest.fixture(scope="module")
def xrays():
    from conftest import DATA

    x, y, _ = load_image_folder(DATA / "chest_xray" / "train", image_size=SIZE)
    return x, y


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.slow
def test_backbone_model_takes_raw_grayscale_and_freezes_by_blocks(name, xrays, tmp_path):
    x, _ = xrays
    model = kp.PneumoniaCNN(backbone=name, backbone_weights=None, image_size=SIZE)
    assert model.backbone == name and model.input_shape == (None, SIZE, SIZE, 1)
    probabilities = model.predict(x[:4], verbose=0)
    assert probabilities.shape == (4, 2) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)

    head = len(kp.PneumoniaCNN(image_size=SIZE, dense_units=(64,)).get_layer("dense1").weights) + 2
    model.freeze_backbone()
    assert len(model.trainable_weights) == head  # dense1 and predictions only
    counts = []
    for n in range(1, len(model.backbone_blocks) + 1):
        model.unfreeze(n)
        counts.append(len(model.trainable_weights))
    assert counts == sorted(counts) and counts[0] > head and len(set(counts)) > 2
    bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and not any(layer.trainable for layer in bn)  # batch norm stays frozen
    model.unfreeze(1, batch_norm=True)
    assert any(layer.trainable for layer in bn)
    with pytest.raises(ValueError, match="`n_blocks` must be between 0 and"):
        model.unfreeze(99)

    # Frozen layers and the backbone survive save/load, and the loaded model predicts the same.
    model.freeze_backbone()
    model.unfreeze(1)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.backbone == name and loaded.get_config()["backbone_weights"] is None
    assert len(loaded.trainable_weights) == len(model.trainable_weights) == counts[0]
    np.testing.assert_allclose(loaded.predict(x[:4], verbose=0), probabilities, atol=1e-5)
    assert model.get_layer(model.gradcam_layer).output.shape[1:3] == (SIZE // 32, SIZE // 32)


@pytest.mark.slow
def test_grayscale_is_mapped_to_the_backbone_rgb_input(xrays):
    x, _ = xrays
    gray = kp.PneumoniaCNN(backbone="efficientnet_b0", backbone_weights=None, image_size=SIZE)
    rgb = kp.PneumoniaCNN(backbone="efficientnet_b0", backbone_weights=None, image_size=SIZE, channels=3)
    rgb.set_weights(gray.get_weights())
    np.testing.assert_allclose(
        gray.predict(x[:4], verbose=0), rgb.predict(np.repeat(x[:4], 3, axis=-1), verbose=0), atol=1e-5
    )


@pytest.mark.slow
def test_backbone_weights_load_from_a_file_by_path(tmp_path):
    application = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    rng = np.random.default_rng(0)
    for variable in application.trainable_weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    application.save_weights(tmp_path / "efficientnet_b0.weights.h5")

    model = kp.PneumoniaCNN(
        backbone="efficientnet_b0", backbone_weights=tmp_path / "efficientnet_b0.weights.h5", image_size=SIZE
    )
    ours = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    # Every named layer's weights (the unnamed input Normalization gets a new name per build).
    theirs = {v.path: keras.ops.convert_to_numpy(v) for v in application.weights if "/" in v.path}
    theirs = {path: value for path, value in theirs.items() if not path.startswith("normalization")}
    assert len(theirs) > 300 and set(theirs) <= set(ours)
    for path, value in theirs.items():
        np.testing.assert_array_equal(ours[path], value, err_msg=path)

    with pytest.raises(ValueError, match="Cannot load the resnet50 backbone weights"):
        kp.PneumoniaCNN(backbone="resnet50", backbone_weights=tmp_path / "efficientnet_b0.weights.h5", image_size=SIZE)
    with pytest.raises(ValueError, match="`backbone` must be None or one of"):
        kp.PneumoniaCNN(backbone="vgg16", image_size=SIZE)
    with pytest.raises(ValueError, match="at least 32"):
        kp.PneumoniaCNN(backbone="resnet50", backbone_weights=None, image_size=16)


@pytest.mark.slow
def test_gradcam_explains_the_backbone_last_feature_map(xrays):
    x, _ = xrays
    model = kp.PneumoniaCNN(backbone="resnet50", backbone_weights=None, image_size=SIZE)
    assert model.gradcam_layer == "conv5_block3_out"
    heatmap = kp.gradcam(model, x[0])
    assert heatmap.shape == (SIZE, SIZE) and heatmap.min() >= 0.0 and heatmap.max() <= 1.0


@pytest.mark.slow
def test_two_stage_fine_tuning_of_a_backbone_on_real_xrays(kaggle_dir, tmp_path):
    model = kp.PneumoniaCNN(backbone="efficientnet_b0", backbone_weights=None, image_size=SIZE)
    data = kp.load_chest_xray(kaggle_dir, image_size=SIZE, validation_split=0.25, seed=1337)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = fine_tune(model, data, tmp_path / "ft", head_epochs=1, epochs=1, unfreeze_blocks=1, verbose=0)
    assert not [w for w in caught if "shuffle" in str(w.message)]  # data.train shuffles; no Keras warning
    assert report["settings"]["unfreeze_blocks"] == 1 and len(report["history"]["loss"]) == 1
    assert json.loads((tmp_path / "ft" / "report.json").read_text())["threshold"] == model.threshold
    loaded = keras.saving.load_model(tmp_path / "ft" / "model.keras")
    assert loaded.backbone == "efficientnet_b0" and loaded.threshold == model.threshold
    assert len(loaded.trainable_weights) == len(model.trainable_weights) < len(loaded.weights)
    with pytest.raises(ValueError, match="Unknown fine-tuning settings"):
        fine_tune(model, data, tmp_path / "x", head_epoch=1)


@pytest.mark.slow
def test_train_cli_with_a_backbone(kaggle_dir, tmp_path):
    from keras_pneumonia.cli import main

    args = ["train", str(kaggle_dir), "--output", str(tmp_path / "run"), "--epochs", "1", "--image-size", "64"]
    args += ["--backbone", "efficientnet_b0", "--backbone-weights", "none", "--validation-split", "0.25"]
    assert main(args) == 0
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert model.backbone == "efficientnet_b0" and model.input_shape == (None, SIZE, SIZE, 1)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["arguments"]["model_kwargs"]["backbone"] == "efficientnet_b0"
