"""Heat maps of what drove a slice's score: Grad-CAM, or occlusion where no gradients.

Grad-CAM (Selvaraju et al. 2017) weights the last convolutional feature maps by the
mean gradient of the class score over each map, keeps the positive part and scales
it to the slice. Gradients depend on the Keras backend: TensorFlow and JAX are
supported; on any other backend `heatmaps` falls back to occlusion sensitivity (how
much the score drops when a patch of the slice is greyed out), which needs only
forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from renalflow.tasks.config import Label
from renalflow.tasks.model import region_of, with_channel


@dataclass
class _Split:
    features: Any  # uint8 slices -> last convolutional feature maps
    head: Any  # feature maps -> P(malignant)
    score: Any  # feature maps -> the logit of P(malignant), what Grad-CAM differentiates


# Feature maps smaller than this say little about where: Grad-CAM uses the last block
# whose maps are at least this wide (7x7 for both profiles at 224 px, as in the paper's
# ResNet50V2).
MIN_SIDE = 7


def _last_4d(layers: list[Any], min_side: int = MIN_SIDE) -> int:
    """Index of the last layer with feature maps at least `min_side` wide (else the
    last layer with any feature maps)."""
    found = []
    for index, layer in enumerate(layers):
        shape = getattr(getattr(layer, "output", None), "shape", None)
        if shape is not None and len(shape) == 4:
            found.append((index, min(int(shape[1] or 0), int(shape[2] or 0))))
    if not found:
        raise ValueError("the model has no convolutional feature maps")
    wide = [index for index, side in found if side >= min_side]
    return wide[-1] if wide else found[-1][0]


def split_model(model: Any) -> _Split:
    """Cut a renalflow classifier after its last convolutional block.

    Works for both profiles: the cpu-demo network is a flat chain of layers, the paper
    network nests ResNet50V2 (whose last block is `post_relu`) as one layer.
    """
    import keras  # heavy (seconds): only processes that explain load it

    outer = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    nested = [i for i, layer in enumerate(outer) if isinstance(layer, keras.Model)]
    inputs = keras.Input(model.input.shape[1:], dtype=model.input.dtype)
    x = inputs
    if nested:
        position = nested[-1]
        backbone = outer[position]
        for layer in outer[:position]:
            x = _apply(layer, x)
        inner = [
            layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)
        ]
        # ResNet is not a chain of layers (residual additions): cut after its last
        # block, `post_relu` (7x7 at 224 px).
        cut = _last_4d(inner, min_side=0)
        trunk = keras.Model(backbone.input, inner[cut].output)
        features = keras.Model(inputs, trunk(x))
        after = inner[cut + 1 :] + outer[position + 1 :]
    else:
        cut = _last_4d(outer)
        for layer in outer[: cut + 1]:
            x = _apply(layer, x)
        features = keras.Model(inputs, x)
        after = outer[cut + 1 :]
    head_in = keras.Input(features.output.shape[1:])
    y = head_in
    for layer in after[:-1]:
        y = layer(y)
    last = after[-1]
    out = last(y)
    # Grad-CAM differentiates the class score before the sigmoid (Selvaraju et al.): a
    # saturated probability has no gradient left to show where the evidence is.
    logit = keras.layers.Dense(last.units, dtype="float32", name="malignant_logit")
    logit.build(y.shape)
    logit.set_weights(last.get_weights())
    return _Split(features, keras.Model(head_in, out), keras.Model(head_in, logit(y)))


def _apply(layer: Any, x: Any) -> Any:
    import keras  # heavy (seconds): only processes that explain load it

    if isinstance(layer, keras.layers.Concatenate):
        # The grey-to-RGB layer takes the same tensor three times.
        return layer([x] * len(layer.input))
    return layer(x)


def _gradients(split: _Split, features: np.ndarray, sign: float) -> np.ndarray:
    import keras  # heavy (seconds): only processes that explain load it

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # the backend Keras runs on, loaded with it

        maps = tf.convert_to_tensor(features)
        with tf.GradientTape() as tape:
            tape.watch(maps)
            score = sign * tf.reduce_sum(split.score(maps, training=False))
        return np.asarray(tape.gradient(score, maps))
    if backend == "jax":
        # The backend Keras runs on, loaded with it.
        import jax
        import jax.numpy as jnp

        def score(maps: Any) -> Any:
            return sign * jnp.sum(split.score(maps, training=False))

        return np.asarray(jax.grad(score)(jnp.asarray(features)))
    raise NotImplementedError(backend)


def grad_cam(model: Any, images: np.ndarray, target: str = Label.MALIGNANT) -> np.ndarray:
    """Grad-CAM heat maps in [0, 1], one per uint8 slice (N, H, W), at slice size.

    `target` is the class explained: `malignant` (the score) or `benign` (its
    opposite), so the deciding slices on either side of a vote can be shown.
    """
    split = split_model(model)
    batch = with_channel(images) if images.ndim == 3 else images
    features = np.asarray(split.features(batch, training=False), dtype=np.float32)
    grads = _gradients(split, features, 1.0 if target == Label.MALIGNANT else -1.0)
    weights = grads.mean(axis=(1, 2), keepdims=True)
    cams = np.maximum((weights * features).sum(axis=-1), 0.0)
    box = region_of(model)
    if box is None:
        return _to_slices(cams, images.shape[1:3])
    # The network saw only its region of the slice: the maps belong there.
    top, bottom, left, right = box
    out = np.zeros((len(images), *images.shape[1:3]), np.float32)
    out[:, top:bottom, left:right] = _to_slices(cams, (bottom - top, right - left))
    return out


def occlusion(
    model: Any, images: np.ndarray, target: str = Label.MALIGNANT, patch: int | None = None
) -> np.ndarray:
    """Occlusion sensitivity in [0, 1]: the drop in the target score when each patch
    of the slice is set to mid-grey. Forward passes only, so it works on any backend."""
    batch = with_channel(images) if images.ndim == 3 else images
    n, height, width = batch.shape[:3]
    patch = patch or max(4, height // 8)
    sign = 1.0 if target == Label.MALIGNANT else -1.0
    base = sign * np.asarray(model.predict_on_batch(batch)).reshape(n)
    rows, cols = -(-height // patch), -(-width // patch)
    drops = np.zeros((n, rows, cols), np.float32)
    for r in range(rows):
        for c in range(cols):
            occluded = batch.copy()
            occluded[:, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = 128
            score = sign * np.asarray(model.predict_on_batch(occluded)).reshape(n)
            drops[:, r, c] = np.maximum(base - score, 0.0)
    return _to_slices(drops, (height, width))


def heatmaps(
    model: Any, images: np.ndarray, target: str = Label.MALIGNANT
) -> tuple[np.ndarray, str]:
    """Grad-CAM where the backend gives gradients, occlusion otherwise; (maps, method)."""
    try:
        return grad_cam(model, images, target), "grad-cam"
    except NotImplementedError:
        return occlusion(model, images, target), "occlusion"


def _to_slices(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:

    out = np.zeros((len(maps), *size), np.float32)
    for i, m in enumerate(maps):
        top = float(m.max())
        scaled = m / top if top > 0 else m
        image = Image.fromarray(scaled.astype(np.float32), mode="F")
        out[i] = np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return np.clip(out, 0.0, 1.0)


_METHOD_NAMES = {"grad-cam": "Grad-CAM", "occlusion": "Occlusion"}


def _blend(grey: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Grey values (..., 3) with the heat map in colour over them, as uint8 RGB."""
    from matplotlib import colormaps  # matplotlib is slow to load: only when drawing

    colour = colormaps["jet"](heat)[..., :3] * 255.0
    alpha = (0.55 * heat)[..., None]
    return (grey * (1 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)


def write_overlay(
    image: np.ndarray,
    heat: np.ndarray,
    caption: str,
    path: Any,
    *,
    phase: str | None = None,
    z: float | None = None,
    method: str = "grad-cam",
    target: str = "malignant",
) -> Any:
    """A PNG of the slice in grey with the heat map in colour over it; `path` is a file
    name or a binary file.

    Top left: the caption (patient key, probability), then the slice's phase and z (mm)
    when given. Bottom left: the colour bar, as the colours look over mid-grey, from low
    to high contribution to `target` according to `method` (how the map was made).
    """
    from PIL import Image, ImageDraw

    grey = np.repeat(image[..., None].astype(np.float32), 3, axis=2)
    blended = _blend(grey, heat)
    scale = max(1, 448 // max(image.shape))
    picture = Image.fromarray(blended).resize(
        (image.shape[1] * scale, image.shape[0] * scale), Image.Resampling.NEAREST
    )
    where = [f"{phase} phase"] if phase else []
    if z is not None:
        where.append(f"z {z:.1f} mm")
    text = caption + ("\n" + ", ".join(where) if where else "")
    draw = ImageDraw.Draw(picture)
    box = draw.multiline_textbbox((4, 4), text)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.multiline_text((4, 4), text, fill=(255, 255, 255))
    # The colour bar, in the bottom-left corner (air outside the body on a CT slice).
    label = f"{_METHOD_NAMES.get(method, method)}: contribution to {target}"
    low, high = (round(draw.textlength(word)) + 4 for word in ("low", "high"))
    width = max(round(draw.textlength(label)), 120)
    bar_w = width - low - high
    top = picture.height - 34
    draw.rectangle((2, top - 2, width + 6, picture.height - 2), fill=(0, 0, 0))
    draw.text((4, top), label, fill=(255, 255, 255))
    ramp = np.linspace(0.0, 1.0, bar_w, dtype=np.float32)[None, :].repeat(10, axis=0)
    bar = _blend(np.full((*ramp.shape, 3), 128.0, np.float32), ramp)
    picture.paste(Image.fromarray(bar), (4 + low, top + 17))
    draw.text((4, top + 16), "low", fill=(255, 255, 255))
    draw.text((4 + low + bar_w + 4, top + 16), "high", fill=(255, 255, 255))
    picture.save(path, format="PNG")
    return path
