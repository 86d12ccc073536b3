"""GenEval (Ghosh et al. 2023): images written in the layout GenEval's evaluator reads, and the tiny
world's judges scoring that layout.

GenEval's prompt file `evaluation_metadata.jsonl` holds one JSON object per line, e.g.
`{"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock",
"count": 3}], "prompt": "a photo of two clocks"}`. An include item is "at least `count` objects of
`class`" (optionally of `color`); an exclude item is "fewer than `count`"; `"position": ["right of",
0]` on an include item says its objects are right of include group 0. What this module relies on, in
djghosh13/geneval:

* `generation/diffusers_generate.py` writes prompt `index` (0-based line number) to the folder
  f"{index:0>5}" holding `metadata.jsonl` (the prompt's JSON object) and `samples/` with the images
  f"{i:05}.png", 4 per prompt by default;
* `evaluation/evaluate_images.py` walks the image folder's sub-folders whose names are all digits,
  reads `<sub>/metadata.jsonl` with `json.load` (one object) and scores every file in `<sub>/samples/`
  that `re.match`es `\\d+\\.png`;
* `evaluation/summary_scores.py` reports the share of correct images per tag and, as the overall
  score, the mean over tags (also: correct images, and prompts with at least one correct image,
  prompts grouped by identical metadata).

`generate_geneval` writes exactly that layout, so the official evaluator scores our output as is.
Images are drawn prompt by prompt, with one generator per prompt seeded from (seed, index), its
`images_per_prompt` images in one sampler call (or in calls of at most `batch_size`, drawing from that
generator in turn, as diffusers_generate.py's `--batch_size`). Prompts are never batched together:
the MaskGIT sampler draws all rows of a batch from one generator (`sampling.image`: one multinomial
over all B * N positions per step), so a row's image depends on the batch size and on its place in
the batch (checked: the same prompt and seed give another image alone than as row 0 of two). Here a
prompt's images depend only on the seed, its index, `images_per_prompt` and (when smaller)
`batch_size`, never on the other prompts or on `limit`.

The tiny world: `world_geneval_prompts` writes the world suite's t2i prompts as GenEval metadata,
and `score_geneval_folder` judges a layout with the world's scene parser (`world.judges.score_t2i`)
instead of GenEval's detector. World prompts mean exact counts, so every include group also gets an
exclude item with count + 1, as GenEval's counting prompts have; its "color" is our extension (the
official evaluator counts exclusions by class only, the world judge by class and colour).
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..image_tokenizer.transforms import load_image
from ..pipelines import MMaDAPipeline
from ..sampling import ImageSampling, Overrides
from ..world import evaluation_suite
from ..world.captions import CATEGORIES, ObjectSpec, Prompt
from ..world.judges import score_t2i
from ..world.scenes import COLORS, RELATIONS, SHAPES
from .records import Meter, Run, call_generator, check_run_settings, data_record, metered, read_jsonl

METADATA_FILE = "metadata.jsonl"
SAMPLES_FOLDER = "samples"
SAMPLE_FILE = re.compile(r"\d+\.png")  # evaluate_images.py: re.match, i.e. a match at the start of the name
_T = TypeVar("_T")
_OFFICIAL_EVALUATOR = "GenEval's evaluator (evaluation/evaluate_images.py in djghosh13/geneval)"


def prompt_folder(index: int) -> str:
    """The folder of prompt `index`, as diffusers_generate.py names it: 0 -> "00000"."""
    return f"{index:0>5}"


def sample_name(k: int) -> str:
    """The file of a prompt's `k`-th image, as diffusers_generate.py names it: 3 -> "00003.png"."""
    return f"{k:05}.png"


@dataclass(frozen=True)
class GenevalConfig:
    """Which prompts, where to write, how many images and how to sample."""

    prompts: Path
    """A GenEval prompt file (`evaluation_metadata.jsonl`, or the tiny world's from `write_prompts`)."""
    out: Path
    """The image folder to write (`<index>/metadata.jsonl`, `<index>/samples/<k>.png`); must hold no
    prompt folders yet, so the evaluator never mixes two runs."""
    images_per_prompt: int = 4
    """Images per prompt (GenEval's default: 4)."""
    batch_size: int = 8
    """Most images per sampler call: a prompt's images are drawn in calls of at most this many (one
    prompt per call; the images do not depend on it when it is >= `images_per_prompt`)."""
    seed: int = 0
    """Seeds one generator per prompt (with the prompt's index)."""
    limit: int | None = None
    """Keep the first `limit` prompts (None: all)."""
    judge: bool = False
    """Score the written layout with the tiny world's judges (world prompts only, checked before
    generating); real GenEval prompts need GenEval's own evaluator."""
    image: Overrides[ImageSampling] = field(default_factory=lambda: Overrides(ImageSampling))
    """Sampler overrides applied over the pipeline's image defaults."""

    def __post_init__(self) -> None:
        check_run_settings(self.limit, self.batch_size, "image", self.image, ImageSampling)
        if self.images_per_prompt < 1:
            raise ValueError(f"`images_per_prompt` must be >= 1, got {self.images_per_prompt}")


@dataclass(frozen=True)
class GenevalPrompt:
    """One line of a prompt file."""

    index: int
    """0-based position among the file's prompts (the folder name)."""
    line: int
    """1-based line number in the file."""
    text: str
    """The JSON text as read (written verbatim to `metadata.jsonl`)."""
    metadata: dict[str, Any]
    """The parsed object: at least `prompt` and `tag` (strings)."""


# ---- prompt files ------------------------------------------------------------------------------
def read_prompts(path: str | Path, *, limit: int | None = None) -> list[GenevalPrompt]:
    """The first `limit` prompts of a GenEval prompt file (blank lines skipped).

    Raises:
        ValueError: `file:line: problem` for a line that is not a JSON object with string `prompt`
            and `tag`; or the file holds no prompts.
        FileNotFoundError: the file does not exist.
    """
    return read_jsonl(path, "GenEval prompt", _prompt, limit=limit)


def _prompt(metadata: Any, text: str, line: int, index: int) -> GenevalPrompt:
    _check_prompt(metadata)
    return GenevalPrompt(index, line, text, metadata)


def _check_prompt(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise ValueError(f"expected a JSON object, got {type(metadata).__name__}")
    for key in ("prompt", "tag"):
        if key not in metadata:
            raise ValueError(f"missing key {key!r}")
        if not isinstance(metadata[key], str) or not metadata[key].strip():
            raise ValueError(f"{key!r} must be a non-empty string, got {metadata[key]!r}")


def write_prompts(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write prompt metadata as a GenEval prompt file: one JSON object per line."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("".join(json.dumps(dict(row), ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return file


# ---- the tiny world's prompts as GenEval metadata ----------------------------------------------
def _group(spec: ObjectSpec, count: int) -> dict[str, Any]:
    return {"class": spec.shape, "count": count} | ({} if spec.color is None else {"color": spec.color})


def prompt_metadata(prompt: Prompt, text: str | None = None) -> dict[str, Any]:
    """A world prompt as GenEval metadata (tag = category; `text` defaults to `prompt.caption`).

    "a red circle left of two blue squares" (objects[0] left of objects[1]) becomes include =
    [two blue squares, a red circle with "position": ["left of", 0]], exclude = [3 blue squares,
    2 red circles].
    """
    include = [_group(spec, spec.count) for spec in prompt.objects]
    if prompt.relation is not None:  # GenEval puts the relation on the object that stands in it
        include = [include[1], include[0] | {"position": [prompt.relation, 0]}]
    exclude = [_group(spec, spec.count + 1) for spec in _include_order(prompt.objects, prompt.relation)]
    return {"tag": prompt.category, "include": include, "exclude": exclude, "prompt": text or prompt.caption}


def _include_order(objects: Sequence[ObjectSpec], relation: str | None) -> list[ObjectSpec]:
    return list(objects) if relation is None else [objects[1], objects[0]]


def prompt_from_metadata(metadata: Mapping[str, Any]) -> Prompt:
    """The world prompt that `prompt_metadata` wrote (its inverse).

    Raises:
        ValueError: one line naming the problem; for a class that is not a world shape (a real
            GenEval prompt), it says to use GenEval's evaluator.
    """
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a JSON object, got {type(metadata).__name__}")
    include = metadata.get("include")
    if not isinstance(include, list) or not 1 <= len(include) <= 2:
        raise ValueError(f"'include' must list 1 or 2 object groups, got {include!r}")
    tag = metadata.get("tag")
    if tag not in CATEGORIES:
        raise ValueError(f"tag {tag!r} is not one of GenEval's categories {CATEGORIES}")
    specs = [_spec(item) for item in include]
    relation = _relation(include)
    objects = tuple(_include_order(specs, relation))
    expected = [_group(spec, spec.count + 1) for spec in specs]
    given = metadata.get("exclude")
    if not isinstance(given, list) or sorted(map(_key, given)) != sorted(map(_key, expected)):
        raise ValueError(f"'exclude' must be {expected} (world prompts mean exact counts), got {given!r}")
    return Prompt(tag, objects, relation)


def _key(item: Any) -> str:
    return json.dumps(item, sort_keys=True)


def _spec(item: Any) -> ObjectSpec:
    if not isinstance(item, dict):
        raise ValueError(f"an include item must be a JSON object, got {item!r}")
    name = item.get("class")
    if name not in SHAPES:
        raise ValueError(f"class {name!r} is not a tiny-world shape {SHAPES}: the built-in judge only understands "
                         f"the tiny world's prompts; score other prompts with {_OFFICIAL_EVALUATOR}")
    color, count = item.get("color"), item.get("count")
    if color is not None and color not in COLORS:
        raise ValueError(f"color {color!r} is not a tiny-world colour {COLORS}")
    if isinstance(count, bool) or not isinstance(count, int):
        raise ValueError(f"'count' must be an integer, got {count!r}")
    unknown = sorted(set(item) - {"class", "count", "color", "position"})
    if unknown:
        raise ValueError(f"include item {item} has keys the world judge does not read: {unknown}")
    return ObjectSpec(name, color, count)


def _relation(include: Sequence[dict[str, Any]]) -> str | None:
    """The relation of objects[0] to objects[1], read off the second include item's position."""
    if "position" in include[0]:
        raise ValueError("'position' may only sit on the second include item (relative to group 0)")
    if len(include) < 2 or "position" not in include[1]:
        return None
    position = include[1]["position"]
    if not (isinstance(position, list) and len(position) == 2 and position[0] in RELATIONS and position[1] == 0):
        raise ValueError(f"'position' must be [relation, 0] with a relation in {RELATIONS}, got {position!r}")
    return str(position[0])


def world_geneval_prompts(per_group: int = 50, seed: int = 0) -> list[dict[str, Any]]:
    """The world suite's t2i prompts (`evaluation_suite(seed, per_group).t2i`) as GenEval metadata,
    in suite order (`per_group` per category)."""
    return [prompt_metadata(example.spec, example.caption)
            for example in evaluation_suite(seed=seed, per_group=per_group).t2i]


# ---- generation --------------------------------------------------------------------------------
def generate_geneval(pipe: MMaDAPipeline, config: GenevalConfig, *, progress: bool = False) -> Run:
    """Write `images_per_prompt` images per prompt in GenEval's layout under `config.out` (task "geneval").

    Outputs: one record per image (index, sample, prompt, tag, file relative to `out`); with `judge`,
    also the world judge's verdict, and the scores of `score_geneval_folder` (else no scores: run
    GenEval's evaluator on `out`).
    """
    prompts = read_prompts(config.prompts, limit=config.limit)
    if config.judge:
        for prompt in prompts:  # refuse non-world prompts before spending any sampling
            _at(f"{config.prompts}:{prompt.line}", prompt_from_metadata, prompt.metadata)
    _check_empty(config.out)
    settings = config.image.apply(pipe.settings.image)
    meter, outputs = Meter(), []
    with metered(pipe.model, meter):
        for prompt in tqdm(prompts, desc="geneval", unit="prompt", disable=not progress, leave=False):
            generator = call_generator(pipe.device, config.seed, prompt.index)
            images = []
            for start in range(0, config.images_per_prompt, config.batch_size):
                count = min(config.batch_size, config.images_per_prompt - start)
                images += pipe.text_to_image([prompt.metadata["prompt"]] * count, generator=generator,
                                             sampling=settings)
                meter.add_images(count)
            outputs += _write_prompt(config.out, prompt, images)
    scores: dict[str, dict[str, float]] = {}
    if config.judge:
        judged = score_geneval_folder(config.out)
        verdicts = {o["file"]: o for o in judged.outputs}
        outputs, scores = [o | verdicts[o["file"]] for o in outputs], judged.scores
    return Run("geneval", scores, outputs, {"data": data_record(config.prompts, len(prompts)), "out": str(config.out),
                                            "limit": config.limit, "images_per_prompt": config.images_per_prompt,
                                            "judge": config.judge, "image": settings}, meter)


def _write_prompt(out: Path, prompt: GenevalPrompt, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
    """`out/<index>/metadata.jsonl` (the prompt's line) and `out/<index>/samples/<k>.png`; one record per image."""
    folder = out / prompt_folder(prompt.index)
    (folder / SAMPLES_FOLDER).mkdir(parents=True)
    (folder / METADATA_FILE).write_text(prompt.text + "\n", encoding="utf-8")
    records = []
    for k, image in enumerate(images):
        file = Path(prompt_folder(prompt.index), SAMPLES_FOLDER, sample_name(k))
        image.save(out / file, format="PNG")
        records.append({"index": prompt.index, "sample": k, "prompt": prompt.metadata["prompt"],
                        "tag": prompt.metadata["tag"], "file": file.as_posix()})
    return records


def _check_empty(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"`out` {str(out)!r} is a file, not a folder")
    taken = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.isdigit()) if out.is_dir() else []
    if taken:
        raise ValueError(f"`out` {str(out)!r} already holds prompt folders ({taken[0]}, ...): GenEval's evaluator "
                         "would score them too; choose an empty folder")


def _at(where: str, parse: Callable[[Any], _T], value: Any) -> _T:
    """`parse(value)`, its ValueError prefixed with `where`."""
    try:
        return parse(value)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


# ---- scoring the layout with the world's judges ------------------------------------------------
def score_geneval_folder(folder: str | Path) -> Run:
    """Judge every sample of a GenEval layout with the tiny world's judge (task "geneval").

    Walks `folder` as evaluate_images.py does (digit-named sub-folders, `metadata.jsonl` by `json.load`,
    samples matching `\\d+\\.png`; here in sorted order), checks every prompt before judging any image,
    and judges each image, read as RGB uint8, with `score_t2i(image, prompt_from_metadata(metadata))`.
    Scores are `geneval_summary`'s; outputs one record per image (file relative to `folder`, index,
    sample, tag, prompt, correct, reasons).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"GenEval image folder {str(root)!r} does not exist")
    subs = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: p.name)
    if not subs:
        raise ValueError(f"{root} holds no GenEval prompt folders (digit-named, e.g. 00000)")
    plan = [(sub, *_read_folder(sub)) for sub in subs]
    if not any(samples for _, _, _, samples in plan):
        raise ValueError(f"{root} holds no samples (<prompt folder>/{SAMPLES_FOLDER}/<digits>.png)")
    outputs = []
    for sub, metadata, prompt, samples in plan:
        for path in samples:
            verdict = score_t2i(np.asarray(load_image(path)), prompt)
            outputs.append({"file": path.relative_to(root).as_posix(), "index": int(sub.name),
                            "tag": metadata["tag"], "prompt": metadata["prompt"], "metadata": _key(metadata),
                            "correct": verdict.correct, "reasons": list(verdict.reasons)})
    return Run("geneval", {"geneval": geneval_summary(outputs)}, outputs,
               {"folder": str(root), "judge": "mmada.world.judges.score_t2i"})


def _read_folder(sub: Path) -> tuple[dict[str, Any], Prompt, list[Path]]:
    file = sub / METADATA_FILE
    try:
        with file.open(encoding="utf-8") as f:
            metadata = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{file} does not exist (every prompt folder needs one)") from None
    except ValueError as err:
        raise ValueError(f"{file}: not one JSON object ({err})") from None
    _at(str(file), _check_prompt, metadata)
    prompt = _at(str(file), prompt_from_metadata, metadata)
    samples = sub / SAMPLES_FOLDER
    if not samples.is_dir():
        raise FileNotFoundError(f"{samples} does not exist (every prompt folder needs one)")
    names = sorted(name for name in os.listdir(samples) if SAMPLE_FILE.match(name) and (samples / name).is_file())
    return metadata, prompt, [samples / name for name in names]


def geneval_summary(outputs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """summary_scores.py's numbers from per-image records (`tag`, `correct`, `metadata`): the share of
    correct images per tag (in order of first appearance), "overall" = the mean over tags, "correct
    images", and "correct prompts" (prompts, grouped by identical metadata, with a correct image)."""
    if not outputs:
        raise ValueError("no images to summarise")
    tags: dict[str, list[bool]] = defaultdict(list)
    prompts: dict[str, bool] = defaultdict(bool)
    for output in outputs:
        tags[output["tag"]].append(bool(output["correct"]))
        prompts[output["metadata"]] |= bool(output["correct"])
    per_tag = {tag: sum(values) / len(values) for tag, values in tags.items()}
    return per_tag | {"overall": sum(per_tag.values()) / len(per_tag),
                      "correct images": sum(bool(o["correct"]) for o in outputs) / len(outputs),
                      "correct prompts": sum(prompts.values()) / len(prompts)}

