"""What `edgeseg train` shows a person: one line per epoch, none of TensorFlow's start-up noise, fast refusals."""

import subprocess
import sys

from edgeseg.sampledata import make_digits


def _digits_npz(path, count=60):
    import numpy as np

    x, y = make_digits(count, seed=1)
    np.savez(path, x_train=x, y_train=y)
    return path


def test_train_prints_one_line_per_epoch_and_no_tensorflow_noise(tmp_path):
    data = _digits_npz(tmp_path / "digits.npz")
    done = subprocess.run([sys.executable, "-m", "edgeseg", "train", "cae", "--data", str(data), "--epochs", "2",
                           "--batch-size", "16", "--out", str(tmp_path / "cae")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout + done.stderr
    lines = text.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"], text
    assert all("loss" in line and "val_loss" in line for line in epochs)
    # The 10-40 s TensorFlow takes to load is said once, before it starts, not left silent.
    loading = [i for i, line in enumerate(lines) if line.startswith("loading TensorFlow")]
    assert len(loading) == 1 and loading[0] < lines.index(epochs[0]), text
    for noise in ("oneDNN", "absl::InitializeLog", "cpu_feature_guard", "Epoch 1/2"):
        assert noise not in text, f"{noise!r} in the output:\n{text}"


def test_train_with_missing_data_fails_at_once_and_creates_nothing(tmp_path):
    code = ("import sys; from edgeseg.cli import main; rc = main(sys.argv[1:]); "
            "print('tensorflow' in sys.modules); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "train", "fcn8", "--data", str(tmp_path / "nothing"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "no such file or folder" in done.stderr, done.stderr
    assert done.stdout.strip() == "False"  # refused before TensorFlow loads: no 15-second wait
    assert not (tmp_path / "out").exists()
