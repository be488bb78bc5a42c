"""Heat maps on a model whose answer is known: its only signal sits in one quadrant."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.explain import (
    deciding_slices,
    grad_cam,
    heatmaps,
    occlusion,
    split_model,
    write_overlay,
)
from tasks.model import build_model, profile_config

SIZE = 64


def quadrant_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise slices; malignant ones carry a bright square somewhere in the top-left
    quadrant, the only signal there is."""
    rng = np.random.default_rng(seed)
    images = rng.normal(100, 15, size=(n, SIZE, SIZE)).clip(0, 255).astype(np.uint8)
    labels = rng.integers(0, 2, n).astype(np.float32)
    half = SIZE // 2
    for i in np.flatnonzero(labels):
        y, x = (int(v) for v in rng.integers(2, half - 10, size=2))
        images[i, y : y + 8, x : x + 8] = 230
    return images, labels


@pytest.fixture(scope="module")
def quadrant_model():
    import keras

    keras.utils.set_random_seed(3)
    model = build_model(profile_config("cpu-demo", input_size=SIZE, learning_rate=1e-3))
    images, labels = quadrant_data(600, 1)
    model.fit(images[..., None], labels, epochs=6, batch_size=32, verbose=0)
    test, test_labels = quadrant_data(40, 2)
    accuracy = float(
        ((model.predict(test[..., None], verbose=0)[:, 0] > 0.5) == test_labels).mean()
    )
    assert accuracy > 0.9, f"the quadrant model did not learn its task ({accuracy:.2f})"
    return model, test[test_labels == 1]


def peaks_in_top_left(maps: np.ndarray) -> float:
    half = SIZE // 2
    hits = [np.unravel_index(np.argmax(m), m.shape) for m in maps]
    return float(np.mean([y < half and x < half for y, x in hits]))


def test_grad_cam_peaks_where_the_signal_is(quadrant_model):
    model, malignant = quadrant_model
    maps = grad_cam(model, malignant)
    assert maps.shape == malignant.shape and maps.min() >= 0 and maps.max() <= 1
    assert peaks_in_top_left(maps) >= 0.9


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


def test_deciding_slices_take_the_winning_side_first():
    p = np.array([0.9, 0.2, 0.6, 0.05, 0.99, 0.4])
    assert deciding_slices(p, "malignant", per_side=2) == [4, 0, 3, 1]
    assert deciding_slices(p, "benign", per_side=2) == [3, 1, 4, 0]
    assert deciding_slices(np.array([0.7, 0.8]), "malignant") == [1, 0]


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
