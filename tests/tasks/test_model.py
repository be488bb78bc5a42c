"""Model construction; the paper profile is checked setting by setting."""

from pathlib import Path

import numpy as np
import pytest

from renalflow.tasks.config import Task
from renalflow.tasks.dataset import iterate_batches
from renalflow.tasks.errors import ModelError
from renalflow.tasks.model import (
    KIDNEY_REGION,
    Profile,
    TrainConfig,
    backbone_of,
    build_model,
    learning_rate,
    padded_size,
    predict_probabilities,
    profile_config,
    region_of,
    region_pixels,
    with_channel,
)


@pytest.fixture(scope="module")
def paper_model():
    return build_model(TrainConfig(weights="none"))


def test_paper_profile_defaults_are_the_papers():
    config = TrainConfig()
    assert (config.epochs, config.batch_size, config.learning_rate) == (10, 32, 2e-5)
    assert config.weights == "imagenet" and config.oversample and config.decay_after is None
    assert not config.augment  # the paper found augmentation harmful
    assert config.select_epoch == 5  # the paper kept the epoch-5 model of 10
    assert config.oversample_unit.value == "patient"  # benign patients were resampled
    assert config.schedule.value == "constant"  # the paper: no decay (decay_after 4 is an option)


def test_the_cpu_demo_profile_and_best_keep_the_lowest_validation_loss():
    assert profile_config("cpu-demo").select_epoch is None
    assert profile_config("paper", select_epoch=0).select_epoch is None
    assert profile_config("paper", select_epoch=3).select_epoch == 3
    with pytest.raises(ValueError, match="--select-epoch best"):
        profile_config("paper", epochs=2)


def test_the_checked_hash_is_the_one_keras_publishes_for_resnet50v2_notop():
    from keras.src.applications.resnet import WEIGHTS_HASHES

    from renalflow.tasks.model import IMAGENET_WEIGHTS_MD5

    assert WEIGHTS_HASHES["resnet50v2"][1] == IMAGENET_WEIGHTS_MD5


def test_a_weights_file_that_is_not_keras_published_one_is_refused(tmp_path):
    from renalflow.tasks.errors import ModelError
    from renalflow.tasks.model import check_weights_file

    other = tmp_path / "resnet50v2_notop.h5"
    other.write_bytes(b"not the published weights")
    with pytest.raises(ModelError, match=r"is not Keras' published .* \(MD5 [0-9a-f]{32}"):
        check_weights_file(str(other))
    with pytest.raises(ModelError, match="does not exist"):
        check_weights_file(str(tmp_path / "missing.h5"))


def test_paper_model_has_the_papers_architecture_and_optimiser(paper_model):
    import keras

    assert paper_model.input_shape == (None, 224, 224, 1)
    assert paper_model.inputs[0].dtype == "uint8"
    backbone = backbone_of(paper_model)
    assert backbone.name.startswith("resnet50v2")
    assert backbone.output_shape == (None, 2048)  # no top, global average pooling
    assert all(layer.trainable for layer in backbone.layers)
    head = paper_model.layers[-1]
    assert isinstance(head, keras.layers.Dense) and head.units == 1
    assert head.activation is keras.activations.sigmoid
    assert isinstance(paper_model.optimizer, keras.optimizers.RMSprop)
    assert float(paper_model.optimizer.learning_rate) == pytest.approx(2e-5)
    assert isinstance(paper_model.loss, keras.losses.BinaryCrossentropy)
    assert head.kernel_regularizer is None
    assert not [layer for layer in paper_model.layers if layer.name.startswith("augment")]


def test_scaling_and_channel_replication_happen_inside_the_model(paper_model):
    names = [layer.name for layer in paper_model.layers]
    assert "resnet_v2_scaling" in names and "grey_to_rgb" in names
    out = paper_model.get_layer("resnet_v2_scaling")(np.array([[0, 255]], dtype=np.uint8))
    np.testing.assert_allclose(np.asarray(out), [[-1.0, 1.0]], atol=1e-6)


def test_paper_model_trains_a_step_on_the_cpu(paper_model):
    images = np.random.default_rng(0).integers(0, 256, size=(2, 224, 224, 1), dtype=np.uint8)
    logs = paper_model.train_on_batch(
        images, np.array([0.0, 1.0], dtype=np.float32), return_dict=True
    )
    assert np.isfinite(logs["loss"])


def test_local_weights_file_round_trips(paper_model, tmp_path: Path, monkeypatch):
    """A local file is loaded into the backbone once its MD5 is the published one (the
    published file itself is not downloaded in tests: this file's hash stands in)."""
    from renalflow.tasks import model as model_module

    path = tmp_path / "resnet50v2_notop.weights.h5"
    backbone_of(paper_model).save_weights(path)
    monkeypatch.setattr(model_module, "IMAGENET_WEIGHTS_MD5", model_module.file_md5(str(path)))
    loaded = build_model(TrainConfig(weights=str(path)))
    for a, b in zip(backbone_of(paper_model).weights, backbone_of(loaded).weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_weights_file_explains(tmp_path: Path):
    with pytest.raises(ModelError, match="does not exist; give a local ResNet50V2"):
        build_model(TrainConfig(weights=str(tmp_path / "nope.h5")))


def test_cpu_demo_profile_is_small_and_says_what_it_is():
    config = profile_config("cpu-demo")
    assert config.profile is Profile.CPU_DEMO and config.weights == "none"
    model = build_model(config)
    assert model.count_params() < 500_000
    assert "cpu_demo" in model.name


def test_cpu_demo_selector_sees_full_resolution_and_the_classifier_half():
    classifier, selector = profile_config("cpu-demo"), profile_config("cpu-demo", Task.SELECTOR)
    assert not classifier.full_resolution and selector.full_resolution
    assert not profile_config("paper", Task.SELECTOR).full_resolution
    half, full = build_model(classifier), build_model(selector)
    names = {layer.name for layer in half.layers}
    assert "half_resolution" in names
    assert "half_resolution" not in {layer.name for layer in full.layers}
    # One more stride-2 stage: the last feature map covers the same share of the slice.
    last = [layer for layer in full.layers if layer.name.startswith("re_lu")][-1]
    shown = [layer for layer in half.layers if layer.name.startswith("re_lu")][-1]
    assert last.output.shape[1:3] == shown.output.shape[1:3]


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="not with --profile paper"):
        TrainConfig(full_resolution=True)
    with pytest.raises(ValueError, match="outside the 10 epochs"):
        TrainConfig(select_epoch=11)
    with pytest.raises(ValueError, match="bf16 or fp16"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="not with schedule cosine"):
        TrainConfig(schedule="cosine", decay_after=4)
    with pytest.raises(ValueError, match="schedule must be one of constant, cosine"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="momentum between 0 and 1"):
        TrainConfig(ema=1.0)
    with pytest.raises(ValueError, match="top < bottom and left < right"):
        TrainConfig(region=(0.5, 0.4, 0.1, 0.9))


def test_paper_profile_sees_the_whole_slice_at_a_constant_rate():
    config = TrainConfig()
    assert config.region is None and config.ema is None and config.schedule == "constant"
    assert learning_rate(config, 1000) == 2e-5


def test_cpu_demo_learning_rate_falls_to_zero_over_the_run():
    config = profile_config("cpu-demo")
    assert config.schedule == "cosine" and config.ema == 0.99
    schedule = learning_rate(config, 100)
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(50)) == pytest.approx(5e-4)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)
    stepped = profile_config("cpu-demo", decay_after=10)
    assert stepped.schedule == "constant" and learning_rate(stepped, 100) == 1e-3


def test_cpu_demo_looks_only_at_the_kidney_region():
    """Pixels outside the region never change a prediction; inside they do."""
    config = profile_config("cpu-demo", input_size=32)
    assert config.region == KIDNEY_REGION
    model = build_model(config)
    top, bottom, left, right = region_pixels(KIDNEY_REGION, 32, 32)
    assert region_of(model) == (top, bottom, left, right)
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, size=(3, 32, 32, 1), dtype=np.uint8)
    outside = rng.integers(0, 256, size=x.shape, dtype=np.uint8)
    outside[:, top:bottom, left:right] = x[:, top:bottom, left:right]
    inside = x.copy()
    inside[:, top:bottom, left:right] = 255 - inside[:, top:bottom, left:right]
    first = np.asarray(model(x, training=False))
    np.testing.assert_allclose(np.asarray(model(outside, training=False)), first)
    assert not np.allclose(np.asarray(model(inside, training=False)), first)
    # Each edge of the region is inside it: the crop is not a pixel too small.
    for edge in (
        (slice(None), top, slice(left, right)),
        (slice(None), bottom - 1, slice(left, right)),
        (slice(None), slice(top, bottom), left),
        (slice(None), slice(top, bottom), right - 1),
    ):
        changed = x.copy()
        changed[edge] = 255 - changed[edge]
        assert not np.allclose(np.asarray(model(changed, training=False)), first), edge
    assert region_of(build_model(TrainConfig(weights="none", input_size=32))) is None


def test_paper_network_takes_a_region_and_refuses_one_too_small():
    model = build_model(TrainConfig(weights="none", input_size=64, region=KIDNEY_REGION))
    top, bottom, left, right = region_pixels(KIDNEY_REGION, 64, 64)
    assert backbone_of(model).input.shape[1:3] == (bottom - top, right - left)
    with pytest.raises(ModelError, match="the network needs at least 8x8"):
        build_model(TrainConfig(weights="none", input_size=32, region=(0.5, 0.51, 0.1, 0.9)))


def test_tail_batches_are_padded_to_few_shapes():
    assert [padded_size(n, 64) for n in (1, 8, 9, 17, 33, 64)] == [8, 8, 16, 32, 64, 64]
    assert padded_size(100, 48) == 48


def test_padding_never_changes_a_prediction():
    """Tails are padded with blank slices whose outputs are dropped: every image gets
    the probability it gets alone, and the model sees only bucketed batch lengths."""
    model = build_model(profile_config("cpu-demo", input_size=32))
    images = np.random.default_rng(3).integers(0, 256, size=(21, 32, 32), dtype=np.uint8)
    seen: list[int] = []
    predict = model.predict_on_batch

    class Recording:
        def predict_on_batch(self, batch):
            seen.append(len(batch))
            return predict(batch)

    batched = predict_probabilities(Recording(), images, batch_size=16)
    alone = np.array([float(predict(image[None, ..., None])[0, 0]) for image in images])
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-5)
    assert seen == [16, 8]


def test_batches_reach_the_model_with_ordinary_strides():
    """A stride-0 channel axis (`images[..., None]`) sends every batch down a slow copy
    path to the accelerator; batches must look like freshly allocated arrays."""
    images = np.zeros((5, 8, 8), dtype=np.uint8)
    assert with_channel(images).strides == np.zeros((5, 8, 8, 1), np.uint8).strides
    x, _ = next(iterate_batches(images, np.zeros(5), np.arange(5), 4))
    assert x.shape == (4, 8, 8, 1) and x.strides == np.zeros((4, 8, 8, 1), np.uint8).strides


def test_cpu_demo_augments_only_while_training():
    config = profile_config("cpu-demo", input_size=32)
    assert config.augment
    model = build_model(config)
    names = {layer.name for layer in model.layers}
    assert {"augment_flip", "augment_zoom", "augment_shift", "augment_noise"} <= names
    x = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 1), dtype=np.uint8)
    first = np.asarray(model(x, training=False))
    np.testing.assert_allclose(np.asarray(model(x, training=False)), first)
    assert not np.allclose(np.asarray(model(x, training=True)), first)


def test_starting_weights_follow_the_seed_whatever_else_draws_random_numbers():
    import random

    config = profile_config("cpu-demo", seed=11)
    first = build_model(config).get_weights()
    random.random()  # another library in the same process drawing from Python's random
    np.random.random()
    again = build_model(config).get_weights()
    other = build_model(profile_config("cpu-demo", seed=12)).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
