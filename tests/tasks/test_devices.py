"""What `renalflow doctor` prints and the `--device gpu` check, on this (CPU) machine."""

import pytest

from renalflow.flows.cli import main
from renalflow.tasks.devices import environment, format_environment, gpu_devices, require_gpu
from renalflow.tasks.errors import InputError


def test_doctor_prints_the_backend_devices_and_versions(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    env = environment()
    assert f"keras backend  {env['keras_backend']}" in out
    assert "devices" in out and "GPUs" in out and "keras " in out
    assert out.strip() == format_environment(env)


def test_gpu_devices_are_told_apart_by_name():
    env = {"devices": ["/device:CPU:0", "/device:GPU:0", "cuda:1 (H200)"]}
    assert gpu_devices(env) == ["/device:GPU:0", "cuda:1 (H200)"]


@pytest.mark.skipif(bool(gpu_devices()), reason="this machine has a GPU")
def test_device_gpu_without_a_gpu_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(InputError, match="--device gpu: this machine sees no GPU"):
        require_gpu("this machine")
    code = main(
        ["train", "--store", str(tmp_path / "s"), "--model-dir", str(tmp_path / "m"),
         "--device", "gpu"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("renalflow train: error: --device gpu: this machine sees no GPU")
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
