"""Shapes scenes: the image half of the tiny world.

A scene is 1-4 flat-coloured shapes (circle, square, triangle) on a black canvas of 32x32 "canvas
units". Everything is chosen so that a lossy image tokenizer with an 8x8 code grid (4x4 px per code)
can still carry the content and a rule-based parser (`mmada.world.parser`) can read it back:

- objects are 8-12 px wide, i.e. 2-3 codes, and never overlap: bounding boxes keep a gap of
  `OBJECT_GAP` px, so blurred reconstructions still segment into one component per object;
- the six colours are far apart in RGB (minimum pairwise distance ~100) and the background is black,
  so a blurred edge only darkens an object's colour and never mimics another palette colour;
- shapes are rasterised with hard edges (pixel centres), so a clean render holds palette colours only.

Relative positions follow GenEval's rule (Ghosh et al. 2023, `relative_position` in its evaluator):
the centre offset, shrunk by 10% of the two objects' summed extents, normalised by the offset length,
must exceed 0.5 along the relation's axis. Scenes only *state* a relation when it holds with a wider
margin (`STATE_STRENGTH`), so that a mild degradation of the image never flips the verdict.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
"""Shape vocabulary; the parser tells them apart by fill ratio and the top/bottom width profile."""

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (255, 140, 0),
    "yellow": (250, 230, 50),
    "green": (40, 180, 60),
    "blue": (40, 90, 240),
    "purple": (160, 60, 210),
}
"""Colour name -> RGB. Closest pair (orange, yellow) is ~103 apart; all are >= 250 from black."""

COLORS: tuple[str, ...] = tuple(PALETTE)
BACKGROUND: tuple[int, int, int] = (0, 0, 0)
CANVAS = 32
"""Side of the canvas in canvas units (= pixels of the default 32x32 render)."""
MIN_OBJECT_SIZE = 8
MAX_OBJECT_SIZE = 12
OBJECT_GAP = 3
"""Minimum background pixels between two bounding boxes; 3 px keeps a sigma=0.7 blur from bridging."""
BORDER = 1
"""Minimum background pixels between an object and the canvas edge."""
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
POSITION_THRESHOLD = 0.1
"""GenEval's POSITION_THRESHOLD: fraction of the summed object extents removed from the offset."""
JUDGE_STRENGTH = 0.5
"""A relation holds when its strength exceeds this (GenEval's 0.5)."""
STATE_STRENGTH = 0.7
"""Generated captions/answers only state relations at least this strong (margin over the judge)."""
NOT_STRENGTH = 0.3
"""VQA answers are unambiguous: every other object is at most this strong for the asked relation."""

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) in canvas units, x1/y1 exclusive; y grows downwards."""


@dataclass(frozen=True)
class SceneObject:
    """One flat-coloured shape; its square bounding box is [x, x+size) x [y, y+size)."""

    shape: str
    """One of `SHAPES`."""
    color: str
    """One of `COLORS`."""
    x: int
    """Left edge of the bounding box, canvas units."""
    y: int
    """Top edge of the bounding box, canvas units."""
    size: int
    """Side of the bounding box, canvas units."""

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"`shape` must be one of {SHAPES}, got {self.shape!r}")
        if self.color not in PALETTE:
            raise ValueError(f"`color` must be one of {COLORS}, got {self.color!r}")
        if self.size <= 0 or self.x < 0 or self.y < 0 or max(self.x, self.y) + self.size > CANVAS:
            raise ValueError(f"object box (x={self.x}, y={self.y}, size={self.size}) must lie on the canvas")

    @property
    def box(self) -> Box:
        return (float(self.x), float(self.y), float(self.x + self.size), float(self.y + self.size))

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.size / 2, self.y + self.size / 2)

    @property
    def name(self) -> str:
        """'red circle'."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """An ordered set of non-overlapping objects (order = placement order, not meaningful)."""

    objects: tuple[SceneObject, ...]
    """The shapes in the scene."""

    def canonical(self) -> str:
        """Order-independent text key, used to hash scenes into splits."""
        parts = sorted(f"{o.color} {o.shape} {o.x} {o.y} {o.size}" for o in self.objects)
        return "; ".join(parts)


def box_center(box: Box) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def relation_strengths(a: np.ndarray, b: np.ndarray, relation: str) -> np.ndarray:
    """Vectorised `relation_strength`: boxes a, b (..., 4) broadcast -> strengths (...)."""
    if relation not in RELATIONS:
        raise ValueError(f"`relation` must be one of {RELATIONS}, got {relation!r}")
    offset = (a[..., :2] + a[..., 2:]) / 2 - (b[..., :2] + b[..., 2:]) / 2  # (..., 2) centre offset
    extents = (a[..., 2:] - a[..., :2]) + (b[..., 2:] - b[..., :2])  # (..., 2) summed widths, heights
    norm = np.hypot(offset[..., 0], offset[..., 1])  # (...)
    revised = np.sign(offset) * np.maximum(np.abs(offset) - POSITION_THRESHOLD * extents, 0.0)
    axis, sign = {"left of": (0, -1.0), "right of": (0, 1.0), "above": (1, -1.0), "below": (1, 1.0)}[relation]
    return np.where(norm > 0, sign * revised[..., axis] / np.where(norm > 0, norm, 1.0), 0.0)


def relation_strength(a: Box, b: Box, relation: str) -> float:
    """How strongly "a <relation> b" holds, GenEval-style; > `JUDGE_STRENGTH` means it holds.

    Args:
        a, b: bounding boxes (x0, y0, x1, y1), canvas units.
        relation: one of `RELATIONS`.
    Returns:
        The component of the centre offset along the relation's direction, after shrinking each
        axis by 10% of the summed extents, divided by the offset length: in [-1, 1], 0.0 for
        coincident centres. E.g. two 10 px boxes side by side 13 px apart: 0.85 for "left of".
    """
    return float(relation_strengths(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), relation))


def region_name(center: tuple[float, float]) -> str:
    """Coarse 3x3 location word for reasoning text: 'top left', 'center', 'bottom right', ..."""
    col = ("left", "", "right")[min(int(center[0] * 3 // CANVAS), 2)]
    row = ("top", "", "bottom")[min(int(center[1] * 3 // CANVAS), 2)]
    return f"{row} {col}".strip() or "center"


Accept = Callable[[tuple[SceneObject, ...], np.ndarray], np.ndarray]
"""Extra placement rule: (objects placed so far, candidate boxes (n, 4)) -> which may join, (n,) bool."""


def _corners(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(BORDER, CANVAS - BORDER - size + 1)
    xs, ys = np.meshgrid(coords, coords)
    return xs.ravel(), ys.ravel()


_CORNERS = {size: _corners(size) for size in range(MIN_OBJECT_SIZE, MAX_OBJECT_SIZE + 1)}
"""Every on-canvas top-left corner (x, y) per object size, (n,) int arrays."""


def _free_boxes(size: int, placed: tuple[SceneObject, ...]) -> np.ndarray:
    """(n, 4) boxes of side `size` that stay on the canvas and clear of `placed`, as float64."""
    xs, ys = _CORNERS[size]  # (n,) each
    free = np.ones(xs.shape, dtype=bool)
    for other in placed:  # clear when >= OBJECT_GAP background pixels separate the boxes on some axis
        clear_x = (xs + size + OBJECT_GAP <= other.x) | (other.x + other.size + OBJECT_GAP <= xs)
        clear_y = (ys + size + OBJECT_GAP <= other.y) | (other.y + other.size + OBJECT_GAP <= ys)
        free &= clear_x | clear_y
    xs, ys = xs[free], ys[free]
    return np.stack([xs, ys, xs + size, ys + size], axis=1).astype(np.float64)


def place_objects(
    rng: random.Random, kinds: Sequence[tuple[str, str]], accept: Accept | None = None, max_tries: int = 200
) -> Scene:
    """Place one object per (shape, colour) in `kinds` at random, non-overlapping positions.

    Sequential sampling: each object draws a size, then a position uniformly among those clear of
    the objects placed before it and allowed by `accept` (e.g. below them, for a stated relation);
    a size with no such position is redrawn (10 times), then the whole layout restarts.

    Args:
        rng: the only source of randomness.
        kinds: (shape, colour) per object, 1-4 entries; objects keep this order in the scene.
        accept: extra rule for each new object given the earlier ones.
        max_tries: layouts to attempt before giving up.
    """
    if not 1 <= len(kinds) <= 4:
        raise ValueError(f"`kinds` must hold 1-4 objects, got {len(kinds)}")
    for _ in range(max_tries):
        placed: tuple[SceneObject, ...] = ()
        for shape, color in kinds:
            for _ in range(10):
                size = rng.randint(MIN_OBJECT_SIZE, MAX_OBJECT_SIZE)
                boxes = _free_boxes(size, placed)
                if accept is not None and len(boxes):
                    boxes = boxes[accept(placed, boxes)]
                if len(boxes):
                    x, y = boxes[rng.randrange(len(boxes)), :2]
                    placed = (*placed, SceneObject(shape, color, int(x), int(y), size))
                    break
            else:
                break  # no room for this object: restart the layout
        else:
            return Scene(placed)
    raise ValueError(f"could not place {list(kinds)} within `max_tries`={max_tries}")


def sample_scene(rng: random.Random, min_objects: int = 1, max_objects: int = 4) -> Scene:
    """A random scene: 1-4 objects with independent uniform shapes and colours (repeats allowed)."""
    if not 1 <= min_objects <= max_objects <= 4:
        raise ValueError(f"need 1 <= `min_objects` ({min_objects}) <= `max_objects` ({max_objects}) <= 4")
    n = rng.randint(min_objects, max_objects)
    kinds = [(rng.choice(SHAPES), rng.choice(COLORS)) for _ in range(n)]
    return place_objects(rng, kinds)


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in box-local coordinates u, v in [0, 1) (u right, v down); bool, same shape."""
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "square":
        return np.ones_like(u, dtype=bool)
    if shape == "triangle":  # isosceles, apex up, base on the bottom edge
        return np.abs(u - 0.5) <= v / 2
    raise ValueError(f"`shape` must be one of {SHAPES}, got {shape!r}")


def render_scene(scene: Scene, size: int = CANVAS) -> np.ndarray:
    """Rasterise a scene with hard edges, sampling each pixel at its centre.

    Args:
        scene: the objects to draw.
        size: output side in pixels; other sizes than 32 scale the canvas (e.g. 128 for previews).
    Returns:
        (size, size, 3) uint8 RGB image; deterministic in `scene`.
    """
    if size < 8:
        raise ValueError(f"`size` must be >= 8, got {size}")
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    centres = (np.arange(size) + 0.5) * (CANVAS / size)  # pixel centres in canvas units
    for obj in scene.objects:
        u = (centres[None, :] - obj.x) / obj.size  # (1, W)
        v = (centres[:, None] - obj.y) / obj.size  # (H, 1)
        inside_box = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)  # (H, W)
        u, v = np.broadcast_arrays(u, v)
        image[inside_box & shape_mask(obj.shape, u, v)] = PALETTE[obj.color]
    return image
