"""How much of each model `edgeseg verify` compares layer by layer, and how long it takes (issue 23).

For every model of the test gallery (``tests/export/test_gallery.py``: the shapes users write) and
three models the project never trained (keras-io's DeepLabV3+ on ResNet50, the TensorFlow tutorial's
MobileNetV2 + pix2pix, an Attention U-Net; ``weights=None`` builds, so nothing downloads), plus the
committed sample FCN-8 and CAE: export with this checkout, then verify it with this checkout, and
record the exit codes, layers compared, layer calls in the export (``layers_total``), layers not
compared, the first failure and verify's wall time (TensorFlow already loaded; the best of
``--repeat`` runs).

To compare with another checkout, run the same file with that checkout first on the path, into
another JSON (an older verify has no ``layers_total``; its compared count is its ``layers`` list):

    python benchmarks/verify_coverage.py --json after.json
    PYTHONPATH=/path/to/main python benchmarks/verify_coverage.py --json before.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def deeplab(size: int = 64, classes: int = 3):
    """keras-io's DeepLabV3+ (ResNet50, ``preprocess_input`` and ``ops.nn.relu`` in the graph)."""
    import keras
    from keras import layers as L, ops

    def block(x, filters=32, kernel=3, dilation=1, bias=False):
        x = L.Conv2D(filters, kernel, dilation_rate=dilation, padding="same", use_bias=bias,
                     kernel_initializer="he_normal")(x)
        return ops.nn.relu(L.BatchNormalization()(x))

    def aspp(x):
        y = L.AveragePooling2D(pool_size=(x.shape[-3], x.shape[-2]))(x)
        y = block(y, kernel=1, bias=True)
        pooled = L.UpSampling2D(size=(x.shape[-3] // y.shape[1], x.shape[-2] // y.shape[2]), interpolation="bilinear")(y)
        branches = [pooled, block(x, kernel=1), block(x, dilation=6), block(x, dilation=12), block(x, dilation=18)]
        return block(L.Concatenate(axis=-1)(branches), kernel=1)

    image = keras.Input((size, size, 3))
    resnet = keras.applications.ResNet50(weights=None, include_top=False,
                                         input_tensor=keras.applications.resnet50.preprocess_input(image))
    x = aspp(resnet.get_layer("conv4_block6_2_relu").output)
    a = L.UpSampling2D(size=(size // 4 // x.shape[1], size // 4 // x.shape[2]), interpolation="bilinear")(x)
    b = block(resnet.get_layer("conv2_block3_2_relu").output, filters=48, kernel=1)
    x = block(block(L.Concatenate(axis=-1)([a, b])))
    x = L.UpSampling2D(size=(size // x.shape[1], size // x.shape[2]), interpolation="bilinear")(x)
    return keras.Model(image, L.Conv2D(classes, 1, padding="same")(x))


def pix2pix(size: int = 64, classes: int = 3):
    """The TensorFlow segmentation tutorial's model: a MobileNetV2 sub-model and pix2pix upsampling blocks."""
    import keras
    from keras import layers as L

    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=None)
    names = ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu",
             "block_16_project"]
    down = keras.Model(base.input, [base.get_layer(n).output for n in names], name="down_stack")

    def up(filters):
        return keras.Sequential([L.Conv2DTranspose(filters, 3, strides=2, padding="same", use_bias=False),
                                 L.BatchNormalization(), L.ReLU()])

    image = keras.Input((size, size, 3))
    skips = down(image)
    x = skips[-1]
    for step, skip in zip([up(64), up(32), up(16), up(8)], reversed(skips[:-1])):
        x = L.Concatenate()([step(x), skip])
    return keras.Model(image, L.Conv2DTranspose(classes, 3, strides=2, padding="same")(x))


def attention_unet(size: int = 64, classes: int = 2):
    """A two-level Attention U-Net (additive gates, BatchNorm, SpatialDropout)."""
    import keras
    from keras import layers as L

    def block(x, filters):
        for _ in range(2):
            x = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(filters, 3, padding="same")(x)))
        return x

    def gate(x, g, filters):
        a = L.Activation("relu")(L.add([L.Conv2D(filters, 2, strides=2, padding="same")(x),
                                        L.Conv2D(filters, 1, padding="same")(g)]))
        psi = L.UpSampling2D(2)(L.Activation("sigmoid")(L.Conv2D(1, 1, padding="same")(a)))
        return L.multiply([x, psi])

    image = keras.Input((size, size, 3))
    c1 = block(image, 8)
    c2 = block(L.MaxPooling2D()(c1), 16)
    c3 = block(L.MaxPooling2D()(c2), 32)
    d2 = block(L.concatenate([L.UpSampling2D()(c3), gate(c2, c3, 16)]), 16)
    d1 = block(L.concatenate([L.UpSampling2D()(d2), gate(c1, d2, 8)]), 8)
    return keras.Model(image, L.Conv2D(classes, 1, activation="softmax")(L.SpatialDropout2D(0.1)(d1)))


def _models(folder: Path) -> dict[str, tuple[Path, list[str]]]:
    """name -> (saved model file, export options)."""
    import keras

    sys.path.insert(0, str(ROOT / "tests" / "export"))
    import test_gallery as gallery  # the gallery's builders, one copy

    from edgeseg.export._keras_file import save_model

    made = {}
    for name, (build, options, _, _) in sorted(gallery.GALLERY.items()):
        made[name] = (gallery._save(folder, name), options)
    for name, build in [("deeplab_v3plus_resnet50", deeplab), ("mobilenetv2_pix2pix", pix2pix),
                        ("attention_unet", attention_unet)]:
        keras.utils.set_random_seed(0)
        made[name] = (save_model(build(), folder / f"{name}.keras", None), [])
    for name in ("fcn8", "cae"):
        made[f"sample_{name}"] = (ROOT / "samples" / "models" / name / "model.keras", None)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--repeat", type=int, default=2, help="verify runs per model; the best time is kept")
    parser.add_argument("--only", help="comma-separated model names (default: all)")
    args = parser.parse_args()
    from edgeseg.cli import main as edgeseg

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, (source, options) in _models(folder).items():
            if args.only and name not in args.only.split(","):
                continue
            target = source.with_name("model.onnx") if options is None else folder / f"{name}.onnx"
            try:
                code = 0 if options is None else edgeseg(["export", str(source), "-o", str(target), "--kind",
                                                          "segmentation", *options])
            except Exception as error:  # noqa: BLE001 - an older checkout's traceback is a result here
                code = f"traceback: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
            row = {"export_exit": code}
            if code == 0:
                best = None
                for _ in range(args.repeat):
                    report = folder / f"{name}.json"
                    report.unlink(missing_ok=True)
                    start = time.perf_counter()
                    try:
                        row["verify_exit"] = edgeseg(["verify", str(source), str(target), "--random", "2",
                                                      "--report", str(report)])
                    except Exception as error:  # noqa: BLE001 - as above
                        row["verify_exit"] = f"traceback: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
                    seconds = time.perf_counter() - start
                    best = seconds if best is None else min(best, seconds)
                data = json.loads(report.read_text()) if report.exists() else {}
                row.update(compared=len(data.get("layers") or []), layers_total=data.get("layers_total"),
                           not_compared=len(data.get("not_compared") or []), first_failure=data.get("first_failure"),
                           verdict=data.get("verdict"), error=data.get("error"), verify_s=round(best, 3))
            results[name] = row
            print(name, row, flush=True)
    Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
