"""Looking at the tiny world: a captioned sample grid and a text description of what the parser sees.

Backs the CLI commands `mmada world sample -o grid.png` (`sample_grid`) and
`mmada world judge IMAGE "caption"` (`describe` plus `judges.score_t2i`).
"""

from __future__ import annotations

import math
import random
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from mmada.world.captions import CATEGORIES, sample_prompt, scene_for_prompt
from mmada.world.parser import parse_scene
from mmada.world.scenes import region_name, render_scene
from mmada.world.vqa import QTYPES, VQAItem, make_question

CELL = 128
"""Side of each scene in the grid, pixels (the 32-unit canvas rendered 4x, edges stay hard)."""
_PAD = 6
_LINE = 12
_TEXT_LINES = 5


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _question(scene: Any, rng: random.Random) -> VQAItem:
    for qtype in rng.sample(QTYPES, len(QTYPES)):  # count and presence always succeed
        item = make_question(scene, qtype, rng)
        if item is not None:
            return item
    raise RuntimeError("no question fits the scene")  # unreachable: count questions always fit


def sample_grid(n: int = 12, seed: int = 0, columns: int | None = None) -> Image.Image:
    """A grid of `n` t2i scenes (categories in turn), each with its caption and one Q&A below.

    Args:
        n: number of scenes.
        seed: selects the scenes; the same seed gives the same picture.
        columns: grid width in cells; default about sqrt(n).
    Returns:
        An RGB PIL image, (CELL + padding) wide per column.
    """
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
    columns = columns or math.ceil(math.sqrt(n))
    if columns < 1:
        raise ValueError(f"`columns` must be >= 1, got {columns}")
    rows = math.ceil(n / columns)
    cell_w, cell_h = CELL + 2 * _PAD, CELL + 2 * _PAD + _TEXT_LINES * _LINE
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    rng = random.Random(f"preview:{seed}")
    for i in range(n):
        prompt = sample_prompt(rng, CATEGORIES[i % len(CATEGORIES)])
        scene = scene_for_prompt(prompt, rng)
        item = _question(scene, rng)
        left, top = (i % columns) * cell_w + _PAD, (i // columns) * cell_h + _PAD
        grid.paste(Image.fromarray(render_scene(scene, size=CELL)), (left, top))
        text = [
            *_wrap(draw, prompt.caption, font, CELL),
            *_wrap(draw, f"Q: {item.question} A: {item.answer}", font, CELL),
        ]
        for j, line in enumerate(text[:_TEXT_LINES]):
            draw.text((left, top + CELL + 2 + j * _LINE), line, fill="black", font=font)
    return grid


def describe(image: Any) -> str:
    """What the scene parser sees, one object per line, e.g.

    ``2 objects:\\n- red circle at (8.0, 9.5), top left, 10x10 px\\n- blue square at ...``
    """
    objects = parse_scene(image)
    if objects is None:
        return "not a shapes image: expected a (32, 32, 3) uint8 RGB image (or float in [0, 1])"
    if not objects:
        return "no objects"
    lines = [f"{len(objects)} object{'s' if len(objects) > 1 else ''}:"]
    for obj in objects:
        (cx, cy), (x0, y0, x1, y1) = obj.center, obj.box
        lines.append(f"- {obj.name} at ({cx:.1f}, {cy:.1f}), {region_name(obj.center)}, {x1 - x0:.0f}x{y1 - y0:.0f} px")
    return "\n".join(lines)
