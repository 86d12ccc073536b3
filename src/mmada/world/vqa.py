"""Visual question answering on shapes scenes, with short answers and chain-of-thought answers.

Question types (`QTYPES`), all with one-word or two-word answers:

- count:    "how many red objects are there?"         -> "2"   (digits; 0 is possible)
- color:    "what color is the square?"               -> "blue" (asked only if one square exists)
- shape:    "what shape is the red object?"           -> "circle" (asked only if one red object)
- position: "what is to the left of the red circle?"  -> "blue square"
- presence: "is there a green triangle?"              -> "yes" / "no" (balanced)

Position questions are asked only when unambiguous: the reference object is the only one of its
colour and shape, exactly one other object holds the relation with `STATE_STRENGTH`, and every other
object is at most `NOT_STRENGTH` in that direction. The reasoning of the CoT answer first lists every
object left to right with a coarse location, then picks out the ones the question is about.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mmada.world.captions import NUMBER_WORDS
from mmada.world.cot import format_cot
from mmada.world.scenes import (
    COLORS,
    NOT_STRENGTH,
    RELATIONS,
    SHAPES,
    STATE_STRENGTH,
    Scene,
    SceneObject,
    region_name,
    relation_strength,
    sample_scene,
)

QTYPES: tuple[str, ...] = ("count", "color", "shape", "position", "presence")
_RELATION_TEXT = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


@dataclass(frozen=True)
class VQAItem:
    """One question about a scene."""

    question: str
    """E.g. 'what color is the square?'."""
    answer: str
    """Short answer, e.g. 'blue', '2', 'yes', 'red circle'."""
    reasoning: str
    """Worked reasoning that ends in the answer (the text inside <think>...</think>)."""
    qtype: str
    """One of `QTYPES`."""

    @property
    def cot_answer(self) -> str:
        return format_cot(self.reasoning, self.answer)


def _a(noun: str) -> str:
    """'a red circle', 'an orange square'."""
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _where(obj: SceneObject) -> str:
    region = region_name(obj.center)
    return "in the center" if region == "center" else f"at the {region}"


def _inventory(objects: Sequence[SceneObject]) -> str:
    """'I see 2 objects: a red circle at the top left and a blue square at the right.'"""
    ordered = sorted(objects, key=lambda o: (o.center[0], o.center[1]))
    items = [f"{_a(o.name)} {_where(o)}" for o in ordered]
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    noun = "object" if len(items) == 1 else "objects"
    return f"I see {NUMBER_WORDS[len(items)]} {noun}: {listed}."


def _count_question(scene: Scene, rng: random.Random) -> VQAItem:
    # Targets: all objects, a shape, a colour, or both; first draw the answer among the distinct
    # counts on offer, so that "1" does not dominate the answers ("0" only 15% of the time).
    targets: dict[tuple[str | None, str | None], int] = {}
    for shape in (None, *SHAPES):
        for color in (None, *COLORS):
            found = [o for o in scene.objects if shape in (None, o.shape) and color in (None, o.color)]
            if found or (color is None) != (shape is None):  # absent single-attribute targets ask "0"
                targets[shape, color] = len(found)
    counts = sorted(set(targets.values()) - ({0} if rng.random() >= 0.15 else set()))
    count = rng.choice(counts or [0])
    shape, color = rng.choice([key for key, n in targets.items() if n == count])
    noun = "objects" if shape is None else f"{shape}s"
    target = f"{color} {noun}" if color else noun
    found = [o for o in scene.objects if shape in (None, o.shape) and color in (None, o.color)]
    listed = " and ".join(f"the {o.name} {_where(o)}" for o in found)
    if count == 0:
        reasoning = f"None of them is {_a(target[:-1])}. So there are 0 {target}."
    elif count == 1:
        reasoning = f"The only one is {listed}. So there is 1 {target[:-1]}."
    else:
        reasoning = f"The {target} are {listed}. So there are {count} {target}."
    return VQAItem(f"how many {target} are there?", str(count), f"{_inventory(scene.objects)} {reasoning}", "count")


def _color_question(scene: Scene, rng: random.Random) -> VQAItem | None:
    unique = [o for o in scene.objects if sum(p.shape == o.shape for p in scene.objects) == 1]
    if not unique:
        return None
    obj = rng.choice(unique)
    reasoning = f"{_inventory(scene.objects)} The only {obj.shape} is {_where(obj)} and it is {obj.color}."
    return VQAItem(f"what color is the {obj.shape}?", obj.color, reasoning, "color")


def _shape_question(scene: Scene, rng: random.Random) -> VQAItem | None:
    unique = [o for o in scene.objects if sum(p.color == o.color for p in scene.objects) == 1]
    if not unique:
        return None
    obj = rng.choice(unique)
    reasoning = f"{_inventory(scene.objects)} The only {obj.color} object is {_where(obj)} and it is {_a(obj.shape)}."
    return VQAItem(f"what shape is the {obj.color} object?", obj.shape, reasoning, "shape")


def _position_question(scene: Scene, rng: random.Random) -> VQAItem | None:
    candidates = []
    for ref in scene.objects:
        if sum(o.name == ref.name for o in scene.objects) != 1:
            continue
        for relation in RELATIONS:
            others = [o for o in scene.objects if o is not ref]
            strengths = [relation_strength(o.box, ref.box, relation) for o in others]
            strong = [o for o, s in zip(others, strengths) if s >= STATE_STRENGTH]
            if len(strong) == 1 and sum(s > NOT_STRENGTH for s in strengths) == 1:
                candidates.append((ref, relation, strong[0]))
    if not candidates:
        return None
    ref, relation, answer = rng.choice(candidates)
    phrase = _RELATION_TEXT[relation]
    reasoning = (
        f"{_inventory(scene.objects)} The {ref.name} is {_where(ref)}. "
        f"The only object {phrase} it is the {answer.name} {_where(answer)}."
    )
    return VQAItem(f"what is {phrase} the {ref.name}?", answer.name, reasoning, "position")


def _presence_question(scene: Scene, rng: random.Random) -> VQAItem | None:
    present = {(o.shape, o.color) for o in scene.objects}
    if rng.random() < 0.5:
        shape, color = rng.choice(sorted(present))
    else:
        absent = sorted({(s, c) for s in SHAPES for c in COLORS} - present)
        shape, color = rng.choice(absent)
    exists = (shape, color) in present
    noun = _a(f"{color} {shape}")
    verdict = f"There is {noun}." if exists else f"None of them is {noun}."
    return VQAItem(
        f"is there {noun}?",
        "yes" if exists else "no",
        f"{_inventory(scene.objects)} {verdict}",
        "presence",
    )


_MAKERS = {
    "count": _count_question,
    "color": _color_question,
    "shape": _shape_question,
    "position": _position_question,
    "presence": _presence_question,
}


def make_question(scene: Scene, qtype: str, rng: random.Random) -> VQAItem | None:
    """A question of `qtype` about `scene`, or None when the scene cannot support it unambiguously."""
    if qtype not in _MAKERS:
        raise ValueError(f"`qtype` must be one of {QTYPES}, got {qtype!r}")
    return _MAKERS[qtype](scene, rng)


def sample_vqa(rng: random.Random, qtype: str | None = None) -> tuple[Scene, VQAItem]:
    """A random scene and a question about it; `qtype` None draws one uniformly from `QTYPES`."""
    qtype = rng.choice(QTYPES) if qtype is None else qtype
    while True:  # every qtype succeeds on a sizeable fraction of random scenes
        scene = sample_scene(rng, min_objects=2 if qtype == "position" else 1)
        item = make_question(scene, qtype, rng)
        if item is not None:
            return scene, item
