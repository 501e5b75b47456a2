"""Training-time augmentation of letterboxed uint8 images: horizontal flip and YOLO-style colour jitter.

Every random draw of one image comes from its own ``numpy.random.Generator``, seeded by the loader's sampler
in the main process (:func:`gpnas.trainers.data.make_loader`), so the same seed gives the same batches whether
the images are made in the main process or in 1 or N DataLoader workers.

Colour jitter uses YOLO's gains (``hsv_h``, ``hsv_s``, ``hsv_v``: each gain is ``1 + uniform(-1, 1) × g``) but
applies them as one 3×3 colour matrix in PIL's C code — a hue rotation about the grey axis, a saturation scale
about the luma grey (the ITU-R 601 weights), and a value gain — clipped to uint8. Measured on a 640×640 image
(2-core EPYC): 1.6 ms, against 15 ms for the RGB -> HSV -> lookup tables -> RGB round trip in PIL (numpy is
slower still), which alone would cap a worker near 60 images/s. Boxes are unchanged by colour jitter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from gpnas.errors import ConfigError

__all__ = ["Augment", "colour_matrix", "jitter_colour"]

_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class Augment:
    """What a training set does to each image (the ``data`` section's flip, hsv_h, hsv_s, hsv_v keys).

    ``flip``: probability of a horizontal flip (labels and :class:`~gpnas.trainers.data.ImageMeta` follow).
    ``hsv_h``: hue gain, in turns of the colour wheel (0.015 = up to ±5.4°); ``hsv_s``: saturation gain;
    ``hsv_v``: value (brightness) gain; each draws ``1 + uniform(-1, 1) × gain`` per image (YOLOv5's 0.015, 0.7,
    0.4 for COCO). All 0: the images pass through untouched and nothing is drawn.
    """

    flip: float = 0.0
    hsv_h: float = 0.0
    hsv_s: float = 0.0
    hsv_v: float = 0.0

    def __post_init__(self) -> None:
        for key, high in (("flip", 1.0), ("hsv_h", 0.5), ("hsv_s", 1.0), ("hsv_v", 1.0)):
            value = getattr(self, key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= high
            if not ok:
                what = {"flip": "a probability", "hsv_h": "a hue gain: ± this many turns are drawn per image"}.get(
                    key, "a gain: 1 ± this factor is drawn per image")
                raise ConfigError(f"data.{key} must be in [0, {high:g}] ({what}), got {value!r}")

    @property
    def enabled(self) -> bool:
        return self.flip > 0 or self.colour

    @property
    def colour(self) -> bool:
        return self.hsv_h > 0 or self.hsv_s > 0 or self.hsv_v > 0

    def draw(self, rng: np.random.Generator) -> tuple[bool, tuple[float, float, float] | None]:
        """-> (flip, (hue turns, saturation gain, value gain) or None): the random choices for one image.

        Always four uniforms in the same order, so turning one augmentation on does not move another's draws."""
        u = rng.random(4)
        gains = None
        if self.colour:
            r = u[1:] * 2 - 1
            gains = (float(r[0] * self.hsv_h), float(1 + r[1] * self.hsv_s), float(1 + r[2] * self.hsv_v))
        return bool(u[0] < self.flip), gains


def colour_matrix(hue_turns: float, saturation: float, value: float) -> tuple[float, ...]:
    """The 12-tuple RGB -> RGB matrix of PIL's ``Image.convert`` for a hue rotation by ``hue_turns`` × 360° about
    the grey axis, then saturation × ``saturation`` about the luma grey, then × ``value``."""
    angle = 2 * math.pi * hue_turns
    cos, sin, third = math.cos(angle), math.sin(angle), 1 / 3
    root = math.sqrt(third) * sin
    a, b, c = cos + (1 - cos) * third, (1 - cos) * third - root, (1 - cos) * third + root
    hue = np.array([[a, b, c], [c, a, b], [b, c, a]])
    sat = (1 - saturation) * np.tile(_LUMA, (3, 1)) + saturation * np.eye(3)
    m = value * sat @ hue
    return tuple(float(v) for row in m for v in (*row, 0.0))


def jitter_colour(image: Image.Image, gains: tuple[float, float, float]) -> Image.Image:
    """image: RGB ``Image`` -> a new RGB ``Image`` with ``gains`` = (hue turns, saturation, value) applied."""
    return image.convert("RGB", colour_matrix(*gains))
