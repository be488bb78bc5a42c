"""Heat maps on a model whose answer is known: its only signal sits in one quadrant."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from renalflow.tasks.explain import (
    grad_cam,
    heatmaps,
    occlusion,
    split_model,
    write_overlay,
)
from renalflow.tasks.model import build_model, profile_config, region_of

SIZE = 64


def quadrant_data(
    n: int, seed: int, box: tuple[int, int, int, int] = (0, SIZE, 0, SIZE), size: int = SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Noise slices; malignant ones carry a bright square somewhere in the top-left
    quadrant of `box` (top, bottom, left, right), the only signal there is."""
    rng = np.random.default_rng(seed)
    images = rng.normal(100, 15, size=(n, size, size)).clip(0, 255).astype(np.uint8)
    labels = rng.integers(0, 2, n).astype(np.float32)
    top, bottom, left, right = box
    for i in np.flatnonzero(labels):
        y = int(rng.integers(top + 2, (top + bottom) // 2 - 10))
        x = int(rng.integers(left + 2, (left + right) // 2 - 10))
        images[i, y : y + 8, x : x + 8] = 230
    return images, labels


def train_quadrant_model(config, box=(0, SIZE, 0, SIZE), n=600):
    import keras

    keras.utils.set_random_seed(3)
    model = build_model(config)
    images, labels = quadrant_data(n, 1, box, config.input_size)
    model.fit(images[..., None], labels, epochs=6, batch_size=32, verbose=0)
    test, test_labels = quadrant_data(40, 2, box, config.input_size)
    accuracy = float(
        ((model.predict(test[..., None], verbose=0)[:, 0] > 0.5) == test_labels).mean()
    )
    assert accuracy > 0.9, f"the quadrant model did not learn its task ({accuracy:.2f})"
    return model, test[test_labels == 1]


# The demo network on the whole slice, without weight averaging (6 short epochs).
WHOLE_SLICE = replace(
    profile_config("cpu-demo", input_size=SIZE, learning_rate=1e-3),
    region=None,
    ema=None,
    schedule="constant",
)


@pytest.fixture(scope="module")
def quadrant_model():
    return train_quadrant_model(WHOLE_SLICE)


def peaks_in_top_left(maps: np.ndarray, box: tuple[int, int, int, int] = (0, SIZE, 0, SIZE)):
    top, bottom, left, right = box
    hits = [np.unravel_index(np.argmax(m), m.shape) for m in maps]
    return float(
        np.mean(
            [top <= y < (top + bottom) // 2 and left <= x < (left + right) // 2 for y, x in hits]
        )
    )


def test_grad_cam_peaks_where_the_signal_is(quadrant_model):
    model, malignant = quadrant_model
    maps = grad_cam(model, malignant)
    assert maps.shape == malignant.shape and maps.min() >= 0 and maps.max() <= 1
    assert peaks_in_top_left(maps) >= 0.9


def test_grad_cam_maps_a_region_model_back_onto_the_whole_slice():
    """The cpu-demo network sees only the kidney region: its maps are placed there
    and peak at the signal inside it. (At 128 px its last feature
    maps are 10x12, wide enough for Grad-CAM to use, as at 224 px.)"""
    config = replace(WHOLE_SLICE, region=profile_config("cpu-demo").region, input_size=128)
    box = region_of(build_model(config))
    assert box is not None
    model, malignant = train_quadrant_model(config, box, n=400)
    maps = grad_cam(model, malignant)
    assert maps.shape == malignant.shape
    assert peaks_in_top_left(maps, box) >= 0.9
    top, bottom, left, right = box
    inside = np.zeros(maps.shape[1:], bool)
    inside[top:bottom, left:right] = True
    assert maps[:, inside].max() > 0


def test_occlusion_peaks_where_the_signal_is(quadrant_model):
    model, malignant = quadrant_model
    maps = occlusion(model, malignant[:8], patch=8)
    assert peaks_in_top_left(maps) >= 0.85


def test_heatmaps_use_grad_cam_on_this_backend(quadrant_model):
    model, malignant = quadrant_model
    maps, method = heatmaps(model, malignant[:2])
    assert method == "grad-cam" and maps.shape == (2, SIZE, SIZE)


def test_the_paper_network_splits_at_its_last_block():
    model = build_model(profile_config("paper", input_size=32, weights="none"))
    split = split_model(model)
    assert split.features.output.shape[1:] == (1, 1, 2048)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32), dtype=np.uint8)
    direct = np.asarray(model.predict_on_batch(images[..., None])).ravel()
    via = np.asarray(split.head(split.features(images[..., None]))).ravel()
    np.testing.assert_allclose(direct, via, rtol=1e-4, atol=1e-5)
    assert grad_cam(model, images).shape == (2, 32, 32)


def test_overlay_is_a_png_with_the_slice_and_the_map(tmp_path):
    from PIL import Image

    image = np.full((64, 64), 100, np.uint8)
    heat = np.zeros((64, 64), np.float32)
    heat[:32, :32] = 1.0
    path = write_overlay(image, heat, "patient 1a2b  P 0.93", str(tmp_path / "o.png"))
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape == (448, 448, 3)
    hot, cold = picture[150, 150], picture[400, 400]  # inside and outside the hot quadrant
    assert hot[0] > cold[0] and (cold == cold[0]).all()
