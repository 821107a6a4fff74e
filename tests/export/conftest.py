"""Small Keras models with the course's layer types, saved as edgeseg .keras files in tmp_path."""

from __future__ import annotations

import keras
import pytest

from edgeseg.export._keras_file import save_model

L = keras.layers


def mini_fcn8(*, size: int = 32, classes: int = 2) -> keras.Model:
    """A few-channel FCN-8: nested encoder sub-model, skip connections, SAME/VALID transposes, crops."""
    keras.utils.set_random_seed(1)
    image = keras.Input((size, size, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv1")(image)
    pool3 = L.MaxPooling2D(name="block1_pool")(x)
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="block2_conv1")(pool3)
    pool4 = L.MaxPooling2D(name="block2_pool")(x)
    encoder = keras.Model(image, [pool3, pool4], name="encoder")

    inp = keras.Input((size, size, 3))
    p3, p4 = encoder(inp)
    score4 = L.Conv2D(classes, 1, name="score4", bias_initializer="random_normal")(p4)
    up4 = L.Conv2DTranspose(classes, 4, strides=2, padding="valid", name="up4", bias_initializer="random_normal")(score4)
    up4 = L.Cropping2D(((1, 1), (1, 1)), name="crop4")(up4)
    score3 = L.Conv2D(classes, 1, name="score3")(p3)
    fused = L.Add(name="fuse")([up4, score3])
    up = L.Conv2DTranspose(classes, 5, strides=2, padding="same", name="up_final")(fused)  # odd k-s: asymmetric
    out = L.Softmax(name="softmax")(up)
    return keras.Model(inp, out, name="fcn8_mini")


def mini_cae() -> tuple[keras.Model, keras.Sequential, keras.Sequential]:
    """Sequential encoder and decoder nested in a functional autoencoder, as the course builds it."""
    keras.utils.set_random_seed(2)
    encoder = keras.Sequential(
        [keras.Input((28, 28, 1)), L.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
         L.Conv2D(2, 3, strides=2, padding="same", activation="relu")],
        name="encoder",
    )
    decoder = keras.Sequential(
        [keras.Input((7, 7, 2)), L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu"),
         L.Conv2DTranspose(1, 3, strides=2, padding="same"), L.Activation("sigmoid")],
        name="decoder",
    )
    image = keras.Input((28, 28, 1))
    return keras.Model(image, decoder(encoder(image)), name="cae"), encoder, decoder


FCN_RECORD = {
    "kind": "segmentation",
    "input": {"height": 32, "width": 32, "channels": 3, "color": "RGB", "scale": 1 / 255,
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": "stretch"},
    "output": {"activation": "softmax", "classes": ["background", "cell"]},
}
GRAY = {"height": 28, "width": 28, "channels": 1, "color": "GRAY", "scale": 1 / 255}


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    """Path per model name: fcn8, cae, encoder, decoder (with records) and foreign (no record)."""
    folder = tmp_path_factory.mktemp("models")
    cae, encoder, decoder = mini_cae()
    fcn = mini_fcn8()
    paths = {
        "fcn8": save_model(fcn, folder / "fcn8.keras", FCN_RECORD),
        "cae": save_model(cae, folder / "cae.keras", {"kind": "autoencoder", "input": GRAY}),
        "encoder": save_model(encoder, folder / "encoder.keras", {"kind": "encoder", "input": GRAY}),
        "decoder": save_model(decoder, folder / "decoder.keras", {"kind": "decoder", "input": GRAY, "latent": {"shape": [7, 7, 2]}}),
        "foreign": save_model(fcn, folder / "foreign.keras", None),
    }
    return paths


@pytest.fixture(scope="session")
def exports(model_files, tmp_path_factory):
    """The mini models exported once for the whole session: fcn8 (plain, as `edgeseg export` writes it), fcn8-nchw,
    fcn8-cuda, cae, cae-nchw. Tests read these files; a test that alters one writes its copy into its tmp_path."""
    from edgeseg.cli import main

    folder = tmp_path_factory.mktemp("onnx")
    paths = {}
    for name, extra in [("fcn8", []), ("fcn8-nchw", ["--nchw"]), ("fcn8-cuda", ["--cuda-friendly"]), ("cae", []),
                        ("cae-nchw", ["--nchw", "--cuda-friendly"])]:
        paths[name] = folder / f"{name}.onnx"
        assert main(["export", str(model_files[name.split("-")[0]]), "-o", str(paths[name]), *extra]) == 0
    return paths
