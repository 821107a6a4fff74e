"""The course's CAE (same layers and shapes as issue 2's), trained briefly on MNIST, and a digit folder.

For `edgeseg bench` on an autoencoder until `edgeseg train cae` lands on main. Writes
``<out>/cae.keras`` (with the contract record), ``<out>/digits/*.png`` (28x28 gray, from the IDX
test set) and, through ``edgeseg export``, ``<out>/cae.onnx``.

    python benchmarks/make_cae.py --data ../shared/data/mnist --out /tmp/caex --digits 4000 --epochs 3
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np


def read_idx_images(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    count, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)


def build_cae():
    import keras
    from keras import layers

    image = keras.Input((28, 28, 1), name="image")
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(image)
    x = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(x)
    latent = layers.Conv2D(2, 7, padding="valid")(x)
    x = layers.Conv2DTranspose(64, 7, padding="valid", activation="relu")(latent)
    x = layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2DTranspose(1, 7, strides=2, padding="same", activation="sigmoid")(x)
    return keras.Model(image, x, name="cae")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="folder with t10k-images-idx3-ubyte.gz")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--digits", type=int, default=4000, help="PNG digits to write (default 4000)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    args = parser.parse_args()
    import keras

    from edgeseg.export import save_model
    from edgeseg.runtime import Contract, InputSpec, OutputSpec

    images = read_idx_images(args.data / "t10k-images-idx3-ubyte.gz")
    folder = args.out / "digits"
    folder.mkdir(parents=True, exist_ok=True)
    for i, digit in enumerate(images[: args.digits]):
        cv2.imwrite(str(folder / f"{i:05d}.png"), digit)
    keras.utils.set_random_seed(0)
    model = build_cae()
    model.compile(optimizer="adam", loss="mse")
    x = images[:8000, :, :, None].astype(np.float32) / 255.0
    history = model.fit(x, x, epochs=args.epochs, batch_size=64, validation_split=0.2, verbose=2)
    print("val_loss", history.history["val_loss"][-1])
    plain = build_cae()
    plain.set_weights(model.get_weights())
    contract = Contract(kind="autoencoder", input=InputSpec(height=28, width=28, channels=1, color="GRAY",
                                                            scale=1 / 255, mean=(0.0,), std=(1.0,)),
                        output=OutputSpec(name="reconstruction", activation="sigmoid"))
    save_model(plain, args.out / "cae.keras", contract.to_dict())
    subprocess.run([sys.executable, "-m", "edgeseg", "export", str(args.out / "cae.keras"), "-o",
                    str(args.out / "cae.onnx")], check=True)


if __name__ == "__main__":
    main()
