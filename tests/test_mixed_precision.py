"""Mixed precision: the dtype policy reaches every layer, is saved, and the output stays float32."""

import keras
import numpy as np
import pytest

import keras_pneumonia as kp
from conftest import TINY
from keras_pneumonia.training import train

X = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1)).astype("uint8")


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.slow
def test_the_policy_reaches_the_layers_and_the_file(policy, tmp_path):
    model = kp.PneumoniaCNN(**TINY, dtype=policy)
    compute = policy.removeprefix("mixed_")
    assert model.dtype_policy.name == policy
    assert model.get_layer("block1_conv1").compute_dtype == compute
    assert model.get_layer("dense1").compute_dtype == compute
    # Statistics and softmax in float32: the output is float32 whatever the policy.
    assert model.get_layer("standardize").compute_dtype == "float32"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert keras.ops.convert_to_numpy(model(X)).dtype == np.float32
    assert model.get_layer("block1_conv1").kernel.dtype == "float32"  # the weights stay float32
    model.compile()
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    model.fit(X, np.array([0, 1, 0, 1]), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_config()["dtype"] == policy
    assert loaded.get_layer("block1_conv1").compute_dtype == compute
    np.testing.assert_allclose(loaded.predict(X, verbose=0), model.predict(X, verbose=0), atol=1e-6)


def test_float32_weights_load_into_a_mixed_model_and_agree():
    model = kp.PneumoniaCNN(**TINY)
    assert model.get_config()["dtype"] == "float32"
    mixed = kp.PneumoniaCNN.from_config({**model.get_config(), "dtype": "mixed_bfloat16"})
    mixed.set_weights(model.get_weights())
    # bfloat16 keeps 8 bits of mantissa (each value rounded by up to 2**-8 relative):
    # probabilities agree to a few hundredths, not to float32's 1e-6.
    np.testing.assert_allclose(mixed.predict(X, verbose=0), model.predict(X, verbose=0), atol=0.05)
    with pytest.raises(ValueError, match="dtype"):
        kp.PneumoniaCNN(**TINY, dtype="int8")


@pytest.mark.slow
def test_train_with_mixed_precision_saves_a_mixed_model(kaggle_dir, tmp_path):
    model_kwargs = {k: v for k, v in TINY.items() if k != "image_size"}
    report = train(
        kaggle_dir,
        tmp_path / "run",
        epochs=1,
        image_size=TINY["image_size"],
        batch_size=8,
        validation_split=0.25,
        augmentation="none",
        mixed_precision="bfloat16",
        model_kwargs=model_kwargs,
        verbose=0,
    )
    assert 0.0 <= report["val"]["auc"] <= 1.0
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert model.dtype_policy.name == "mixed_bfloat16"
