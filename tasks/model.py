"""The classifier: the paper's ResNet50V2 and a small CPU demo network, in Keras 3.

Written against `keras` and numpy only, so the same code runs on TensorFlow (the
default backend) and on JAX. The model takes one-channel uint8 slices; scaling to
[-1, 1] (ResNetV2's preprocessing) and channel replication happen inside it, so the
input pipeline moves uint8 and the accelerator does the float work.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar

import numpy as np

from renalflow.tasks.config import SEED, MixedPrecision, OversampleUnit, Profile, Schedule, Task
from renalflow.tasks.errors import ModelError

NOT_PAPER_NOTE = (
    "cpu-demo profile: a small network trained briefly so the pipeline can be shown on a "
    "laptop CPU. It is NOT the paper's ResNet50V2 model and its numbers are not the "
    "paper's."
)

UNSTATED_BY_THE_PAPER = {
    "batch_size": "renalflow's choice: the paper does not state its batch; 32 is Keras' "
    "default and fits ResNet50V2 at 224 px in the paper's 4 GB GPU",
    "window": "renalflow's choice: the paper exported 8-bit images without naming a CT "
    "window; 40/400 HU is the standard abdominal soft-tissue window",
    "interpolation": "renalflow's inference: the paper resized 512 to 224 px through Keras' "
    "load_img, which uses nearest-neighbour unless told otherwise",
    "oversample_draws": "renalflow's choice: the paper does not say whether benign patients "
    "were drawn with replacement; renalflow draws them at random (seeded) with replacement",
}
"""What a paper-profile model's config.json (its model card) labels as renalflow's choice,
with the reason: values the paper does not state."""

E = TypeVar("E", bound=StrEnum)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; the defaults are the paper's (Pedersen et al. 2020).

    Attributes:
        profile: `paper` (ResNet50V2, 224x224x3) or `cpu-demo` (small CNN).
        epochs: 10 in the paper.
        batch_size: 32, renalflow's choice: the paper does not state its batch; 32 is
            Keras' default and fits ResNet50V2 at 224 px in the paper's 4 GB GPU.
        learning_rate: RMSprop, 2e-5 in the paper (no decay).
        weights: `imagenet` (downloaded by Keras only when asked), `none` (random), or
            a path to a local copy of Keras' published ResNet50V2 no-top weights file
            (offline hospitals; its MD5 is checked against Keras' published hash).
        select_epoch: keep the model of this epoch (the paper kept epoch 5 of 10, chosen
            by watching validation); None keeps the epoch with the lowest validation
            loss (renalflow's option, and the cpu-demo profile's rule).
        decay_after: multiply the learning rate by `decay_factor` after this epoch
            (the authors' suggested improvement: after the fourth); None = no decay.
        schedule: `constant` (the paper; `decay_after` steps it down) or `cosine`
            (the rate falls smoothly to zero over the run).
        ema: keep an exponential moving average of the weights with this momentum
            (per step) and validate, checkpoint and keep the averaged weights; None
            (the paper) trains and keeps the raw weights.
        region: (top, bottom, left, right) fractions of the slice the network looks
            at; None (the paper) looks at the whole slice.
        mixed_precision: None, "bf16" or "fp16".
        oversample: resample benign training data to 50:50 (the paper did).
        oversample_unit: `patient` (the paper: benign patients are drawn, each with all
            their images, until benign and malignant patients are 50:50) or `image`.
            A slice selector always resamples images (its classes are slices).
        augment: random horizontal flips, zoom, shifts and pixel noise while training
            (inactive at inference). Off for the paper's model, where rotation and
            flipping made results much worse; on for cpu-demo, where it is what stops
            a network trained from random weights on a few dozen patients from
            telling them apart by body size and scanner noise instead of the lesion.
        seed: seeds weight initialisation, shuffling and oversampling.
        full_resolution: cpu-demo only (ours): the small network sees the slice at full
            resolution, with one more stride-2 stage so that it still sees a mass and
            its kidney at once. The slice selector's default: at half resolution it
            cannot tell a kidney slice beside the mass from one through it
            (bench/bench_selection.py); the classifier keeps half resolution, the
            setting its benchmark figures were measured with.
    """

    profile: Profile = Profile.PAPER
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 2e-5
    weights: str = "imagenet"
    select_epoch: int | None = 5
    decay_after: int | None = None
    decay_factor: float = 0.1
    schedule: Schedule = Schedule.CONSTANT
    ema: float | None = None
    region: tuple[float, float, float, float] | None = None
    mixed_precision: MixedPrecision | None = None
    oversample: bool = True
    oversample_unit: OversampleUnit = OversampleUnit.PATIENT
    augment: bool = False
    seed: int = SEED
    input_size: int = 224
    full_resolution: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "profile", Profile(self.profile))
        if self.full_resolution and self.profile is not Profile.CPU_DEMO:
            raise ValueError(
                "full_resolution shapes the cpu-demo network; not with --profile paper"
            )
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs, batch_size and learning_rate must be positive")
        if self.select_epoch is not None and not 1 <= self.select_epoch <= self.epochs:
            raise ValueError(
                f"select_epoch {self.select_epoch} is outside the {self.epochs} epochs trained "
                "(give --select-epoch N within them, or --select-epoch best for the lowest "
                "validation loss)"
            )
        object.__setattr__(self, "schedule", _vocabulary(Schedule, "schedule", self.schedule))
        object.__setattr__(
            self,
            "oversample_unit",
            _vocabulary(OversampleUnit, "oversample_unit", self.oversample_unit),
        )
        if self.schedule is Schedule.COSINE and self.decay_after is not None:
            raise ValueError("decay_after steps a constant learning rate; not with schedule cosine")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"ema is a momentum between 0 and 1, got {self.ema}")
        if self.region is not None:
            object.__setattr__(self, "region", check_region(self.region))
        if self.mixed_precision is not None:
            try:
                precision = MixedPrecision(self.mixed_precision)
            except ValueError:
                raise ValueError(
                    f"mixed_precision must be bf16 or fp16, got {self.mixed_precision}"
                ) from None
            object.__setattr__(self, "mixed_precision", precision)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["profile"] = self.profile.value
        out["schedule"] = self.schedule.value
        out["oversample_unit"] = self.oversample_unit.value
        out["mixed_precision"] = self.mixed_precision.value if self.mixed_precision else None
        out["region"] = list(self.region) if self.region is not None else None
        return out


def _vocabulary(enum: type[E], name: str, value: str) -> E:
    """`value` as a member of `enum`; a ValueError listing the choices otherwise."""
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(member.value for member in enum)
        raise ValueError(f"{name} must be one of {choices}, got {value}") from None


def check_region(values: Any) -> tuple[float, float, float, float]:
    """(top, bottom, left, right) fractions of a slice, or ValueError saying what is wrong."""
    region = tuple(float(v) for v in values)
    if len(region) != 4 or not (
        0 <= region[0] < region[1] <= 1 and 0 <= region[2] < region[3] <= 1
    ):
        raise ValueError(
            "region is (top, bottom, left, right) as fractions of the slice with "
            f"top < bottom and left < right, got {tuple(values)}"
        )
    return region[0], region[1], region[2], region[3]


# Where the kidneys are on an axial slice of a centred abdominal field of view: either
# side of the spine, in the posterior half. (top, bottom, left, right) as fractions.
KIDNEY_REGION = (0.28, 0.9, 0.14, 0.86)
MIN_REGION = 8  # pixels: smaller regions leave the networks nothing to pool
REGION_LAYER = "kidney_region"  # the cropping layer; explain.py finds the region by it


LOWEST_VAL_LOSS = 0
"""`select_epoch` given as this keeps the epoch with the lowest validation loss (None in
TrainConfig; None among overrides means "the profile's rule")."""


def profile_config(
    profile: Profile | str, task: Task = Task.CLASSIFIER, **overrides: Any
) -> TrainConfig:
    """Defaults for a profile and the model's task, then explicit overrides (None values
    are ignored; `select_epoch=LOWEST_VAL_LOSS` keeps the epoch with the lowest
    validation loss)."""
    profile = Profile(profile)
    base = TrainConfig(profile=profile)
    if profile is Profile.CPU_DEMO:
        # A randomly initialised small network needs a larger step than fine-tuning; a
        # cosine schedule and weight averaging give a model that does not swing from
        # epoch to epoch; the kidney region keeps it off the body outline and bowel.
        base = replace(
            base,
            epochs=20,
            select_epoch=None,  # lowest validation loss: averaged weights settle late
            oversample_unit=OversampleUnit.IMAGE,  # as measured by bench/bench_cpu_demo.py
            learning_rate=1e-3,
            weights="none",
            batch_size=32,
            augment=True,
            schedule=Schedule.COSINE,
            ema=0.99,
            region=KIDNEY_REGION,
            full_resolution=Task(task) is Task.SELECTOR,
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("select_epoch") == LOWEST_VAL_LOSS:
        given["select_epoch"] = None
    if given.get("decay_after") is not None and "schedule" not in given:
        given["schedule"] = Schedule.CONSTANT  # asking for a step decay replaces a cosine default
    return replace(base, **given)


def _initializers(seed: int) -> Callable[[], Any]:
    """Glorot-uniform initialisers (Keras' default) with their own seeds, drawn from
    `seed` in the order layers are built. An unseeded Keras initialiser takes its seed
    from Python's global `random` when it is created, so any library (or thread) that
    draws from it in the same process changes the starting weights."""
    import keras  # heavy (seconds): only processes that build or run a model load it

    rng = np.random.default_rng([seed, 0x1A17])

    def next_initializer() -> Any:
        return keras.initializers.GlorotUniform(seed=int(rng.integers(1, 2**31 - 1)))

    return next_initializer


def _small_backbone(
    x: Any, layers: Any, init: Callable[[], Any], full_resolution: bool = False
) -> Any:
    """A small CNN for the CPU demo, sized to the lesion rather than the abdomen.

    The slice is averaged to half size (about 3.5 mm a pixel) and seen by one
    full-resolution convolution before any stride, so small lesions keep their
    texture; two stride-2 stages follow, so each output position sees about 75 mm
    (a renal mass and its kidney) and global max pooling reports the most suspicious
    place. A network that sees the whole abdomen at once learns body shapes instead.
    With `full_resolution` the slice is not averaged and a third stride-2 stage keeps
    the same view (about four times the computation).
    BatchNormalization uses momentum 0.9 so its statistics settle within a demo run.
    `init` gives each convolution its seeded initialiser.
    """

    def conv(x: Any, filters: int, kernel: int = 3, strides: int = 1) -> Any:
        x = layers.Conv2D(
            filters,
            kernel,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer=init(),
        )(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        return layers.ReLU()(x)

    if not full_resolution:
        x = layers.AveragePooling2D(2, name="half_resolution")(x)
    x = conv(x, 16)
    x = conv(conv(x, 24, strides=2), 24)
    x = conv(conv(x, 48, strides=2), 48)
    if full_resolution:
        x = conv(conv(x, 64, strides=2), 64)
    x = conv(x, 64, kernel=1)
    x = layers.GlobalMaxPooling2D()(x)
    return layers.Dropout(0.3, name="head_dropout")(x)


def region_pixels(
    region: tuple[float, float, float, float], height: int, width: int
) -> tuple[int, int, int, int]:
    """A fractional (top, bottom, left, right) region as pixel bounds of a slice."""
    top, bottom, left, right = region
    return (round(top * height), round(bottom * height), round(left * width), round(right * width))


def region_of(model: Any) -> tuple[int, int, int, int] | None:
    """The (top, bottom, left, right) pixel bounds a model looks at; None = whole slice."""
    for layer in model.layers:
        if layer.name == REGION_LAYER:
            (top, bottom), (left, right) = layer.cropping
            _, height, width, _ = model.input.shape
            return (top, height - bottom, left, width - right)
    return None


def _augmentation(x: Any, layers: Any, seed: int) -> Any:
    """Training-time augmentation on the scaled [-1, 1] slice; identity at inference.
    Zoom and shifts make body size and position useless for telling patients apart,
    added noise (0.03, about 6 HU in the 400 HU window) blurs each scanner's noise
    level without drowning a lesion's texture; padding is air (-1)."""
    x = layers.RandomFlip("horizontal", seed=seed, name="augment_flip")(x)
    x = layers.RandomZoom(
        0.3, fill_mode="constant", fill_value=-1.0, seed=seed + 1, name="augment_zoom"
    )(x)
    x = layers.RandomTranslation(
        0.1, 0.1, fill_mode="constant", fill_value=-1.0, seed=seed + 2, name="augment_shift"
    )(x)
    return layers.GaussianNoise(0.03, seed=seed + 3, name="augment_noise")(x)


def learning_rate(config: TrainConfig, steps: int) -> Any:
    """The learning rate, or its schedule over `steps` optimiser steps in all (a model
    built without knowing its steps, `steps` 0, gets the constant rate)."""
    import keras  # heavy (seconds): only processes that build or run a model load it

    if config.schedule is Schedule.COSINE and steps > 0:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, steps)
    return config.learning_rate


def build_model(config: TrainConfig, steps: int = 0) -> Any:
    """Build and compile the classifier for `config` (uint8 (S, S, 1) in, P(malignant) out).
    `steps` is the number of optimiser steps the run will take (for a cosine schedule)."""
    import keras  # heavy (seconds): only processes that build or run a model load it
    from keras import layers

    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(
            "mixed_bfloat16" if config.mixed_precision is MixedPrecision.BF16 else "mixed_float16"
        )
    else:
        keras.mixed_precision.set_global_policy("float32")
    init = _initializers(config.seed)
    size = config.input_size
    inputs = keras.Input((size, size, 1), dtype="uint8", name="slice")
    # ResNetV2 preprocessing ("tf" mode): x / 127.5 - 1, on the device.
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="resnet_v2_scaling")(inputs)
    if config.augment:
        x = _augmentation(x, layers, config.seed)
    if config.region is not None:
        # After augmentation, so shifts and zoom move anatomy in and out of the region.
        top, bottom, left, right = region_pixels(config.region, size, size)
        if bottom - top < MIN_REGION or right - left < MIN_REGION:
            raise ModelError(
                f"region {config.region} leaves {bottom - top}x{right - left} pixels of a "
                f"{size}-pixel slice; the network needs at least {MIN_REGION}x{MIN_REGION}"
            )
        x = layers.Cropping2D(((top, size - bottom), (left, size - right)), name=REGION_LAYER)(x)
    if config.profile is Profile.PAPER:
        x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
        # keras.applications seeds its random initialisers from Python's `random`:
        # reseed it here so a random start (`weights none`) follows the config's seed.
        random.seed(config.seed)
        backbone = keras.applications.ResNet50V2(
            include_top=False,
            weights=_backbone_weights(config.weights),
            input_shape=(int(x.shape[1]), int(x.shape[2]), 3),  # the region, if one is set
            pooling="avg",
        )
        backbone.trainable = True  # all weights trainable, as in the paper
        x = backbone(x)
    else:
        x = _small_backbone(x, layers, init, config.full_resolution)
    outputs = layers.Dense(
        1, activation="sigmoid", dtype="float32", kernel_initializer=init(), name="malignant"
    )(x)
    model = keras.Model(inputs, outputs, name=f"renalflow_{config.profile.value.replace('-', '_')}")
    model.compile(
        optimizer=keras.optimizers.RMSprop(
            learning_rate=learning_rate(config, steps),
            use_ema=config.ema is not None,
            ema_momentum=config.ema if config.ema is not None else 0.99,
        ),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc"),
        ],
    )
    return model


IMAGENET_WEIGHTS = "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
"""Keras' ImageNet weights of ResNet50V2 without its top, as Keras names and caches them."""
IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_WEIGHTS
)
IMAGENET_WEIGHTS_MD5 = "fac2f116257151a9d068a22e544a4917"


def imagenet_weights() -> str:
    """The local path of the ImageNet weights: Keras' cache, filled on first use. An
    offline machine gets one line saying how to train without a download."""
    import urllib.error

    import keras  # heavy (seconds): only a training process asks for weights

    try:
        return str(
            keras.utils.get_file(
                IMAGENET_WEIGHTS,
                IMAGENET_WEIGHTS_URL,
                cache_subdir="models",
                file_hash=IMAGENET_WEIGHTS_MD5,
            )
        )
    except Exception as err:
        # Keras re-raises a failed download as a bare Exception whose context is the
        # URLError; only that case is a user's situation, anything else is re-raised.
        cause = err.__cause__ or err.__context__
        if not isinstance(err, urllib.error.URLError) and not isinstance(
            cause, urllib.error.URLError | TimeoutError | ConnectionError
        ):
            raise
        raise ModelError(
            f"cannot download the ImageNet weights of ResNet50V2 ({IMAGENET_WEIGHTS_URL}: "
            f"{getattr(cause, 'reason', cause)}): on a machine without internet pass "
            "--weights PATH (that file, copied from a machine that has it, e.g. "
            f"~/.keras/models/{IMAGENET_WEIGHTS}) or --weights none (random start)"
        ) from err


def file_md5(path: str) -> str:
    """The MD5 of a file, as Keras publishes its weights' hashes."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights_file(path: str) -> str:
    """`path` when it is Keras' published ResNet50V2 no-top weights file (by its MD5);
    a ModelError saying what to pass otherwise."""
    if not os.path.isfile(path):
        raise ModelError(
            f"weights file {path} does not exist; give a local ResNet50V2 (no top) weights "
            f"file ({IMAGENET_WEIGHTS}), 'imagenet' to download through Keras, or 'none' "
            "for random weights"
        )
    found = file_md5(path)
    if found != IMAGENET_WEIGHTS_MD5:
        raise ModelError(
            f"weights file {path} is not Keras' published {IMAGENET_WEIGHTS} (MD5 {found}, "
            f"published {IMAGENET_WEIGHTS_MD5}): copy that file again from a machine that "
            f"has it (~/.keras/models/{IMAGENET_WEIGHTS}), or pass --weights none"
        )
    return path


def resolve_weights(config: TrainConfig) -> str | None:
    """The backbone's weights file for `config` (None: random start or no backbone),
    checked, downloaded or refused: training calls it before it writes anything."""
    if config.profile is not Profile.PAPER:
        return None
    return _backbone_weights(config.weights)


def _backbone_weights(weights: str) -> str | None:
    if weights == "none":
        return None
    if weights == "imagenet":
        return imagenet_weights()
    return check_weights_file(weights)


def backbone_of(model: Any) -> Any:
    """The ResNet50V2 sub-model of a paper-profile model (for saving its weights)."""
    for layer in model.layers:
        if layer.name.startswith("resnet50v2"):
            return layer
    raise ModelError("this model has no ResNet50V2 backbone (is it the cpu-demo profile?)")


def with_channel(images: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, H, W, 1) with ordinary strides. `images[..., None]` gives the
    new axis a stride of 0, and such arrays take a slow path to the device (under JAX
    on CPU a 512-slice batch took 6.2 instead of 2.8 ms to transfer)."""
    return images.reshape(*images.shape, 1)


def padded_size(n: int, batch_size: int) -> int:
    """The batch length a tail of `n` images is padded to: the next power of two (at
    least 8), at most `batch_size`. Compiling backends (JAX/XLA) build one program per
    input shape, so every run then sees at most log2(batch_size) shapes instead of one
    per distinct tail, for at most twice the work on the tail alone."""
    size = 8
    while size < n:
        size *= 2
    return min(size, batch_size)


def predict_probabilities(model: Any, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """P(malignant) per image; uint8 (N, S, S) batches go to the model as they are."""
    out = np.empty(len(images), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        n = len(batch)
        size = padded_size(n, batch_size)
        if size > n:
            batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), batch.dtype)])
        predicted = np.asarray(model.predict_on_batch(with_channel(batch))).reshape(-1)
        out[start : start + n] = predicted[:n]
    return out
