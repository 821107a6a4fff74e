"""A small U-Net "made elsewhere": plain Keras, no edgeseg record, for README "Your own model".

It stands for a model a user brings: written and saved with Keras alone (``model.save``), with a
free input size (``Input((None, None, 3))``), pixels scaled by 1/255 in RGB order, softmax over 3
classes (background and the two shape classes of ``samples/scenes``). Trained briefly on the 32
committed scenes so its masks mean something; about 90 KB. Seeded, so a rerun gives the same
architecture and close (not bit-identical: TensorFlow's CPU kernels) weights.

    python benchmarks/make_elsewhere_unet.py --scenes samples/scenes --out samples/models/elsewhere/unet.keras
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np


def build_unet(*, classes: int = 3, width: int = 8):
    """Two levels down, two up, skip connections by concatenation: the classic shape, tiny."""
    import keras

    layers = keras.layers
    image = keras.Input((None, None, 3), name="pixels")
    a = layers.Conv2D(width, 3, padding="same", activation="relu")(image)
    b = layers.Conv2D(2 * width, 3, padding="same", activation="relu")(layers.MaxPooling2D()(a))
    c = layers.Conv2D(2 * width, 3, padding="same", activation="relu")(layers.MaxPooling2D()(b))
    u = layers.Conv2DTranspose(2 * width, 2, strides=2)(c)
    u = layers.Conv2D(2 * width, 3, padding="same", activation="relu")(layers.concatenate([u, b]))
    u = layers.UpSampling2D()(u)
    u = layers.Conv2D(width, 3, padding="same", activation="relu")(layers.concatenate([u, a]))
    return keras.Model(image, layers.Conv2D(classes, 1, activation="softmax")(u), name="unet_elsewhere")


def read_scenes(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    names = sorted(p.name for p in (folder / "images").glob("*.png"))
    images = [cv2.cvtColor(cv2.imread(str(folder / "images" / n)), cv2.COLOR_BGR2RGB) for n in names]
    masks = [cv2.imread(str(folder / "masks" / n), cv2.IMREAD_UNCHANGED) for n in names]
    return np.stack(images).astype("float32") / 255.0, np.stack(masks).astype("int32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=Path, default=Path("samples/scenes"), help="images/ + masks/ folder")
    parser.add_argument("--out", type=Path, default=Path("samples/models/elsewhere/unet.keras"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import keras

    keras.utils.set_random_seed(args.seed)
    images, masks = read_scenes(args.scenes)
    model = build_unet()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(images, masks, batch_size=8, epochs=args.epochs, verbose=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plain = build_unet()  # uncompiled copy: the file holds no optimizer state (a third of the size)
    plain.set_weights(model.get_weights())
    plain.save(args.out)  # plain Keras: no edgeseg record, as a model made elsewhere
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB), "
          f"train accuracy {history.history['accuracy'][-1]:.3f}, {model.count_params()} parameters")


if __name__ == "__main__":
    main()
