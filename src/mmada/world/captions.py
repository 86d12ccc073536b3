"""Captions for shapes scenes: GenEval-style prompt specs, their text, and their truth on objects.

A `Prompt` is the structured form of a caption; the text is rendered from it (`Prompt.caption`) and
parsed back (`parse_caption`). `evaluate_prompt` decides whether a list of objects satisfies a prompt;
it runs on ground-truth `SceneObject`s (to check generated data) and on `ParsedObject`s read from an
image (the t2i judge), so data and judge cannot disagree about what a caption means.

Categories mirror GenEval's six (Ghosh et al. 2023), every caption naming colours:

| category      | example                                     | checks                                 |
|---------------|---------------------------------------------|----------------------------------------|
| single_object | "a red circle"                              | one object                             |
| two_object    | "a red circle and a blue square"            | two different shapes                   |
| counting      | "three green triangles"                     | an exact count (2-4)                   |
| colors        | "a red circle and a blue circle"            | one shape in two colours               |
| position      | "a red circle to the left of a blue square" | left of / right of / above / below     |
| color_attr    | "two red circles above a blue square"       | counts and colours bound in a relation |

Semantics (GenEval's, made exact): each named group must be present *exactly* `count` times, objects
the caption does not name are ignored, and a relation must hold between every pair of objects of
the first and second group. A group without a colour ("a circle", accepted by `parse_caption`)
matches any colour.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mmada.world.scenes import (
    COLORS,
    JUDGE_STRENGTH,
    RELATIONS,
    SHAPES,
    STATE_STRENGTH,
    Box,
    Scene,
    SceneObject,
    place_objects,
    relation_strength,
    relation_strengths,
)

CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
_RELATION_TEXT = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


class ObjectLike(Protocol):
    """What `evaluate_prompt` needs of an object: `SceneObject` and `ParsedObject` both qualify."""

    @property
    def shape(self) -> str: ...
    @property
    def color(self) -> str: ...
    @property
    def box(self) -> Box: ...


@dataclass(frozen=True)
class ObjectSpec:
    """A group of identical objects named by a caption: "two red circles"."""

    shape: str
    """One of `SHAPES`."""
    color: str | None
    """One of `COLORS`; None matches any colour."""
    count: int = 1
    """Exact number of matching objects required, 1-4."""

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"`shape` must be one of {SHAPES}, got {self.shape!r}")
        if self.color is not None and self.color not in COLORS:
            raise ValueError(f"`color` must be one of {COLORS} or None, got {self.color!r}")
        if not 1 <= self.count <= 4:
            raise ValueError(f"`count` must be in 1..4, got {self.count}")

    def matches(self, obj: ObjectLike) -> bool:
        return obj.shape == self.shape and (self.color is None or obj.color == self.color)

    @property
    def text(self) -> str:
        """'a red circle', 'an orange square', 'three green triangles', 'a circle'."""
        noun = " ".join(w for w in (self.color, self.shape + ("s" if self.count > 1 else "")) if w)
        if self.count > 1:
            return f"{NUMBER_WORDS[self.count]} {noun}"
        return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


@dataclass(frozen=True)
class Prompt:
    """The structured spec of a caption, scored by `evaluate_prompt` and `judges.score_t2i`."""

    category: str
    """One of `CATEGORIES`."""
    objects: tuple[ObjectSpec, ...]
    """One or two groups."""
    relation: str | None = None
    """One of `RELATIONS`, read as "objects[0] <relation> objects[1]"; None for no relation."""

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"`category` must be one of {CATEGORIES}, got {self.category!r}")
        if not 1 <= len(self.objects) <= 2:
            raise ValueError(f"`objects` must hold 1 or 2 groups, got {len(self.objects)}")
        if self.relation is not None and (self.relation not in RELATIONS or len(self.objects) != 2):
            raise ValueError(f"`relation` must be one of {RELATIONS} between two groups, got {self.relation!r}")

    @property
    def caption(self) -> str:
        """The caption text, e.g. 'two red circles above a blue square'."""
        if self.relation is None:
            return " and ".join(group.text for group in self.objects)
        first, second = self.objects
        return f"{first.text} {_RELATION_TEXT[self.relation]} {second.text}"


@dataclass(frozen=True)
class T2IVerdict:
    """GenEval-style verdict for one image and prompt; truthy when correct."""

    correct: bool
    """Whether every group count and the relation hold."""
    category: str
    """The prompt's category ('' when the input was malformed)."""
    reasons: tuple[str, ...] = ()
    """Why it is incorrect, one line per failed check."""

    def __bool__(self) -> bool:
        return self.correct

    @property
    def score(self) -> float:
        return 1.0 if self.correct else 0.0


def evaluate_prompt(objects: Sequence[ObjectLike], prompt: Prompt) -> T2IVerdict:
    """Whether `objects` satisfy `prompt` (exact group counts; the relation for every pair).

    Example: [red circle at x=5, blue square at x=20] satisfies "a red circle to the left of a blue
    square" but not "a red circle to the right of a blue square" nor "two red circles".
    """
    groups = [[o for o in objects if spec.matches(o)] for spec in prompt.objects]
    reasons = [
        f"expected {spec.count} {spec.text.split(' ', 1)[1]}, found {len(found)}"
        for spec, found in zip(prompt.objects, groups)
        if len(found) != spec.count
    ]
    if prompt.relation is not None and not reasons:
        for a in groups[0]:
            for b in groups[1]:
                strength = relation_strength(a.box, b.box, prompt.relation)
                if strength <= JUDGE_STRENGTH:
                    reasons.append(
                        f"{a.color} {a.shape} at {_center(a)} is not {prompt.relation} "
                        f"{b.color} {b.shape} at {_center(b)} (strength {strength:.2f})"
                    )
    return T2IVerdict(correct=not reasons, category=prompt.category, reasons=tuple(reasons))


def _center(obj: ObjectLike) -> tuple[float, float]:
    x0, y0, x1, y1 = obj.box
    return ((x0 + x1) / 2, (y0 + y1) / 2)


_GROUP = r"(a|an|one|two|three|four|[1-4])\s+(?:(\w+)\s+)?(circle|square|triangle)s?"
_RELATION_PATTERN = "|".join(re.escape(text) for text in _RELATION_TEXT.values())
_CAPTION = re.compile(rf"^{_GROUP}(?:\s+(and|{_RELATION_PATTERN})\s+{_GROUP})?$")
_PREFIX = re.compile(r"^(?:a|an)\s+(?:photo|image|picture)\s+of\s+")


def _group_spec(count_word: str, color: str | None, shape: str, caption: str) -> ObjectSpec:
    if color is not None and color not in COLORS:
        raise ValueError(f"`caption` {caption!r}: unknown colour {color!r} (known: {', '.join(COLORS)})")
    count = (
        1
        if count_word in ("a", "an")
        else (int(count_word) if count_word.isdigit() else NUMBER_WORDS.index(count_word))
    )
    return ObjectSpec(shape, color, count)


def parse_caption(caption: str) -> Prompt:
    """Parse a caption in the template language back into a `Prompt`.

    Accepts the templates' output plus small variations: any case, surrounding spaces, a final
    period, an optional "a photo of" prefix, digits for counts, colour-free groups ("a circle").
    The category is inferred from the structure (see the module table).

    Raises:
        ValueError: when the caption is outside the template language.
    """
    text = " ".join(str(caption).lower().replace(",", " ").split()).rstrip(".").strip()
    text = _PREFIX.sub("", text)
    match = _CAPTION.match(text)
    if match is None:
        raise ValueError(f"`caption` {caption!r} is not in the shapes caption language")
    count1, color1, shape1, joiner, count2, color2, shape2 = match.groups()
    groups = [_group_spec(count1, color1, shape1, caption)]
    if joiner is not None:
        groups.append(_group_spec(count2, color2, shape2, caption))
    if len(groups) == 2 and (groups[0].shape, groups[0].color) == (groups[1].shape, groups[1].color):
        raise ValueError(f"`caption` {caption!r} names the same group twice")
    relation = next((rel for rel, phrase in _RELATION_TEXT.items() if phrase == joiner), None)
    return Prompt(_infer_category(groups, relation), tuple(groups), relation)


def _infer_category(groups: Sequence[ObjectSpec], relation: str | None) -> str:
    if relation is not None:
        return "color_attr" if any(g.count > 1 for g in groups) else "position"
    if len(groups) == 1:
        return "single_object" if groups[0].count == 1 else "counting"
    if any(g.count > 1 for g in groups):
        return "color_attr"
    return "colors" if groups[0].shape == groups[1].shape else "two_object"


def sample_prompt(rng: random.Random, category: str) -> Prompt:
    """A random prompt of `category` (see the module table); every group names a colour."""
    shape, color = rng.choice(SHAPES), rng.choice(COLORS)
    if category == "single_object":
        return Prompt(category, (ObjectSpec(shape, color),))
    if category == "counting":
        return Prompt(category, (ObjectSpec(shape, color, rng.randint(2, 4)),))
    if category == "two_object":
        shape_a, shape_b = rng.sample(SHAPES, 2)
        return Prompt(category, (ObjectSpec(shape_a, color), ObjectSpec(shape_b, rng.choice(COLORS))))
    if category == "colors":
        color_a, color_b = rng.sample(COLORS, 2)
        return Prompt(category, (ObjectSpec(shape, color_a), ObjectSpec(shape, color_b)))
    if category in ("position", "color_attr"):
        # Two different (shape, colour) kinds; color_attr binds a count of 2 to one of them. Three
        # objects at most: four objects all in one relation rarely fit on a 32 px canvas.
        kind_a, kind_b = rng.sample([(s, c) for s in SHAPES for c in COLORS], 2)
        counts = (1, 1) if category == "position" else rng.choice([(2, 1), (1, 2)])
        groups = (ObjectSpec(*kind_a, counts[0]), ObjectSpec(*kind_b, counts[1]))
        return Prompt(category, groups, rng.choice(RELATIONS))
    raise ValueError(f"`category` must be one of {CATEGORIES}, got {category!r}")


def scene_for_prompt(prompt: Prompt, rng: random.Random) -> Scene:
    """A scene showing exactly the prompt's objects, any stated relation holding with a margin.

    Colour-free groups get a random colour. The relation must reach `STATE_STRENGTH` (0.7) for every
    pair, above the judge's 0.5, so a mildly degraded render is still judged correct.
    """
    # Place the smaller group first: every later object then only has to satisfy the relation
    # against objects already placed, so layouts rarely need a restart.
    order = sorted(range(len(prompt.objects)), key=lambda g: prompt.objects[g].count)
    groups = [g for g in order for _ in range(prompt.objects[g].count)]  # group of each placed object
    kinds = [(prompt.objects[g].shape, prompt.objects[g].color or rng.choice(COLORS)) for g in groups]
    if prompt.relation is None:
        return place_objects(rng, kinds)
    relation = prompt.relation

    def accept(placed: tuple[SceneObject, ...], boxes: np.ndarray) -> np.ndarray:
        ok = np.ones(len(boxes), dtype=bool)
        group = groups[len(placed)]
        for other, other_group in zip(placed, groups):
            if other_group != group:  # the relation reads "group 0 <relation> group 1"
                first, second = (boxes, np.asarray(other.box)) if group == 0 else (np.asarray(other.box), boxes)
                ok &= relation_strengths(first, second, relation) >= STATE_STRENGTH
        return ok

    return place_objects(rng, kinds, accept)
