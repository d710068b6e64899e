import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_pneumonia as kp
from conftest import FULLRES, TINY
from keras_pneumonia.cli import main
from keras_pneumonia.gradcam import find_last_conv_layer

SIZE, PATCH = 48, 14

# "gradcam" runs on every backend (tf-keras-vis on TensorFlow, the backend's own gradient on
# JAX and PyTorch); "gradcam++" and "scorecam" are tf-keras-vis's only, and the matrix's jax and
# torch cells check their error instead.
ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
tensorflow_only = pytest.mark.skipif(not ON_TENSORFLOW, reason="tf-keras-vis needs the TensorFlow backend")


def _striped_images(n, rng):
    """Noise with one 14x14 striped patch at a random place: horizontal stripes for
    class 0, vertical for class 1. Returns images, labels and each patch's corner."""
    stripes = np.zeros((PATCH, PATCH), np.uint8)
    stripes[::4] = stripes[1::4] = 230
    labels = rng.integers(0, 2, size=n)
    images = rng.integers(0, 60, size=(n, SIZE, SIZE, 1)).astype(np.uint8)
    corners = rng.integers(2, SIZE - PATCH - 2, size=(n, 2))
    for image, label, (r, c) in zip(images, labels, corners):
        image[r : r + PATCH, c : c + PATCH, 0] = stripes if label == 0 else stripes.T
    return images, labels, corners


@pytest.fixture(scope="module")
def patch_model():
    """A PneumoniaCNN trained for a few seconds: the class is decided by the patch's stripes."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images, labels, _ = _striped_images(512, rng)
    model = kp.PneumoniaCNN(
        image_size=SIZE,
        filters=(8, 16, 32),
        convs_per_block=1,
        dense_units=(),
        dropout=0.0,
        normalization="rescale",
        augmentation=False,
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(images, labels, epochs=10, batch_size=32, verbose=0)
    test = _striped_images(32, rng)
    assert model.evaluate(test[0], test[1], verbose=0, return_dict=True)["accuracy"] > 0.95
    return model, *test


# TensorFlow only: which of the two logits carries the patch's evidence depends on the
# training's random stream, which differs by backend (on JAX and PyTorch one class's map is
# diffuse: its logit rises with the absence of the other's stripes). The Grad-CAM computation
# itself is checked on every backend against tf-keras-vis's map of the released model below.
@tensorflow_only
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.slow
def test_heat_falls_on_the_deciding_patch_for_both_classes(patch_model, method):
    model, images, labels, corners = patch_model
    for label in (0, 1):
        chosen = np.flatnonzero(labels == label)[:6]
        heatmaps = kp.gradcam(model, images[chosen], class_index=label, method=method)
        for heatmap, (r, c) in zip(heatmaps, corners[chosen]):
            region = np.zeros_like(heatmap, dtype=bool)
            region[max(r - 4, 0) : r + PATCH + 4, max(c - 4, 0) : c + PATCH + 4] = True
            inside = heatmap[region].sum() / heatmap.sum()
            assert inside > 0.6, (label, inside)  # the region is about a fifth of the image


def test_predicted_class_is_explained_by_default(patch_model):
    model, images, labels, _ = patch_model
    image = images[labels == 1][0]
    np.testing.assert_allclose(kp.gradcam(model, image), kp.gradcam(model, image, class_index=1), atol=1e-5)


def test_shapes_ranges_and_image_inputs():
    model = kp.PneumoniaCNN(**TINY)
    rng = np.random.default_rng(0)
    one = kp.gradcam(model, rng.integers(0, 256, size=(70, 50), dtype=np.uint8))
    assert one.shape == (70, 50) and one.min() >= 0 and one.max() <= 1
    batch = kp.gradcam(model, rng.integers(0, 256, size=(3, 32, 32, 1), dtype=np.uint8))
    assert batch.shape == (3, 32, 32)
    mixed = kp.gradcam(model, [rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8), *sorted(FULLRES.glob("*.jpeg"))])
    assert [m.shape for m in mixed][0] == (20, 30)
    assert mixed[1].shape[0] > 100  # heatmaps at the full resolution of the originals
    for m in mixed:
        assert m.dtype == np.float32 and m.min() >= 0.0 and m.max() <= 1.0


def test_nested_pneumonia_cnn_inside_a_sequential(patch_model):
    model, images, _, _ = patch_model
    outer = keras.Sequential([keras.Input((SIZE, SIZE, 1)), model], name="wrapper")
    assert find_last_conv_layer(outer) == f"{model.name}/block3_conv1"
    nested = kp.gradcam(outer, images[:4])
    direct = kp.gradcam(model, images[:4])
    np.testing.assert_allclose(nested, direct, atol=1e-4)


@pytest.mark.slow
def test_keras_applications_backbone_inside_a_functional_model():
    backbone = keras.applications.MobileNetV2(input_shape=(64, 64, 3), include_top=False, weights=None, alpha=0.35)
    inputs = keras.Input((64, 64, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(backbone(inputs)))
    model = keras.Model(inputs, outputs)
    layer = find_last_conv_layer(model)
    assert layer.startswith(backbone.name + "/")
    heatmaps = kp.gradcam(model, np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    assert heatmaps.shape == (2, 64, 64)
    explicit = kp.gradcam(model, np.zeros((64, 64, 3), np.uint8) + 50, layer=f"{backbone.name}/block_1_project")
    assert explicit.shape == (64, 64)


def test_explicit_layer_and_errors(patch_model):
    model, images, _, _ = patch_model
    early = kp.gradcam(model, images[0], layer="block1_conv1")
    assert early.shape == (SIZE, SIZE)
    with pytest.raises(ValueError, match="not on the path"):
        kp.gradcam(model, images[0], layer="nope")
    with pytest.raises(ValueError, match="method"):
        kp.gradcam(model, images[0], method="lime")
    with pytest.raises(ValueError, match="class_index"):
        kp.gradcam(model, images[0], class_index=5)


def test_overlay_and_figure(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (60, 40), dtype=np.uint8)
    heat = np.zeros((10, 10))
    heat[:5] = 1.0
    out = kp.overlay(image, heat, alpha=0.5)
    assert out.shape == (60, 40, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[:30], out[30:])
    assert np.array_equal(kp.overlay(image, heat, alpha=0.0)[..., 0], image)
    figure = kp.explanation_figure(image, heat, label="PNEUMONIA", probability=0.9, path=tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")
    assert figure.get_suptitle() == "PNEUMONIA  (P(pneumonia) = 0.900)"


@pytest.fixture
def tiny_model_file(tmp_path):
    path = tmp_path / "tiny.keras"
    kp.PneumoniaCNN(threshold=0.5, **TINY).save(path)
    return path


@pytest.mark.slow
def test_predict_cli_on_full_resolution_images_with_a_broken_file(tmp_path, tiny_model_file, capsys):
    images = tmp_path / "images"
    shutil.copytree(FULLRES, images)
    (images / "broken.jpeg").write_bytes((images / "IM-0314-0001.jpeg").read_bytes()[:5000])
    files = sorted(str(p) for p in images.glob("*.jpeg"))
    out_dir = tmp_path / "cams"
    code = main(["predict", *files, "--weights", str(tiny_model_file), "--json", "--gradcam", str(out_dir)])
    captured = capsys.readouterr()
    assert code == 1
    results = {Path(r["path"]).name: r for r in json.loads(captured.out)}
    assert len(results) == 4
    broken = results.pop("broken.jpeg")
    assert broken["probability"] is None and broken["decision"] is None and "truncated" in broken["error"]
    for r in results.values():
        assert {"path", "decision", "probability", "threshold", "model", "version"} <= set(r)
        assert r["decision"] in ("NORMAL", "PNEUMONIA") and 0 <= r["probability"] <= 1 and r["error"] is None
    assert "broken.jpeg" in captured.err and "Traceback" not in captured.err
    assert sorted(p.name for p in out_dir.glob("*.png")) == sorted(
        f"{p.stem}_gradcam.png" for p in FULLRES.glob("*.jpeg")
    )
    assert main(["predict", str(images / "IM-0314-0001.jpeg"), "--weights", str(tiny_model_file)]) == 0
    assert "P(pneumonia)=" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_runs_offline_with_the_released_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_PNEUMONIA_OFFLINE", "1")
    assert main(["demo", "--output", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "Model: pneumonia_cnn_v3 (the default preset)" in out and "out-of-distribution flag on" in out
    assert out.count("P(pneumonia)=") >= 2
    assert len(list((tmp_path / "demo").glob("*.png"))) >= 2
    results = json.loads((tmp_path / "demo" / "predictions.json").read_text())
    assert all("/" not in r["path"] and Path(r["gradcam"]).exists() for r in results)  # names; overlays made


@pytest.mark.parametrize("method", ["gradcam++", "scorecam"])
def test_tf_keras_vis_methods_on_another_backend_get_a_clear_error(monkeypatch, method):
    if ON_TENSORFLOW:
        monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="needs the TensorFlow backend.*method='gradcam'"):
        kp.gradcam(kp.PneumoniaCNN(**TINY), np.zeros((8, 8), np.uint8), method=method)


@tensorflow_only
@pytest.mark.parametrize("class_index", [0, 1])
def test_the_backends_own_gradient_gives_tf_keras_vis_heatmaps(class_index):
    """On TensorFlow both paths run: the hand-written one (JAX's and PyTorch's) must agree with tf-keras-vis."""
    from keras_pneumonia.gradcam import _flat_clone, _model_input, _tf_keras_vis_cams, native_gradcam

    model = kp.PneumoniaCNN.from_pretrained(compile=False)
    batch = np.stack([_model_input(model, path) for path in sorted(FULLRES.glob("*.jpeg"))]).astype("float32")
    classes = [class_index] * len(batch)
    flat, target = _flat_clone(model, model.gradcam_layer)
    reference = np.asarray(_tf_keras_vis_cams(flat, target, batch, classes, "gradcam"))
    flat, target = _flat_clone(model, model.gradcam_layer)  # a fresh copy: both set the last activation
    native = native_gradcam(flat, target, batch, classes)
    assert native.shape == reference.shape == batch.shape[:3]
    # A film the model is sure is NORMAL can have no positive PNEUMONIA evidence at all: an
    # all-zero map (pneumonia_cnn_v3 on IM-0314-0001), which both paths must then give.
    assert sum(theirs.max() > 0 for theirs in reference) >= 2
    for ours, theirs in zip(native, reference):
        if theirs.max() == 0:
            assert ours.max() == 0
            continue
        assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.999
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3 * theirs.max())


def test_predict_with_a_tf_keras_vis_method_on_another_backend_is_a_clear_error(monkeypatch, tmp_path, capsys):
    if ON_TENSORFLOW:
        monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    image = sorted(FULLRES.glob("*.jpeg"))[0]
    code = main(["predict", str(image), "--gradcam", str(tmp_path / "cams"), "--method", "scorecam"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--method scorecam needs the TensorFlow backend" in err and "--method gradcam" in err
    assert not (tmp_path / "cams").exists()


REFERENCE = Path(__file__).parent / "data" / "gradcam_v2_IM-0314-0001.npy"


def test_every_backend_gives_tf_keras_vis_map_of_the_released_model():
    """The map of pneumonia_cnn_v2 for tests/data/fullres/IM-0314-0001.jpeg, at the model's input size.

    The reference was computed by tf-keras-vis on TensorFlow and saved as float16::

        from keras_pneumonia.gradcam import _model_input
        model = kp.PneumoniaCNN.from_pretrained("pneumonia_cnn_v2", compile=False)
        image = _model_input(model, "tests/data/fullres/IM-0314-0001.jpeg")[..., 0]
        np.save(REFERENCE, kp.gradcam(model, image).astype(np.float16))

    On JAX and PyTorch the same call takes the backend's own gradient (`native_gradcam`).
    """
    from keras_pneumonia.gradcam import _model_input

    model = kp.PneumoniaCNN.from_pretrained("pneumonia_cnn_v2", compile=False)
    image = _model_input(model, FULLRES / "IM-0314-0001.jpeg")[..., 0]
    heatmap = kp.gradcam(model, image)
    reference = np.load(REFERENCE).astype(np.float32)
    assert heatmap.shape == reference.shape == (160, 160)
    assert np.corrcoef(heatmap.ravel(), reference.ravel())[0, 1] > 0.999
    np.testing.assert_allclose(heatmap, reference, atol=2e-3)  # float16 storage
