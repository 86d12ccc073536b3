"""The GenEval runner: the official evaluator's folder layout, the world's prompts as GenEval metadata and
back, seeded images that do not depend on the other prompts, and the world judge scoring the layout."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mmada.evaluation.geneval import (
    GenevalConfig,
    generate_geneval,
    geneval_summary,
    prompt_from_metadata,
    prompt_metadata,
    read_prompts,
    score_geneval_folder,
    world_geneval_prompts,
    write_prompts,
)
from mmada.pipelines import MMaDAPipeline
from mmada.sampling import ImageSampling, Overrides
from mmada.utils.files import BUILTIN_MODELS
from mmada.world import evaluation_suite, parse_caption
from mmada.world.judges import score_t2i

FAST = Overrides(ImageSampling, timesteps=4)
# Real lines of GenEval's prompts/evaluation_metadata.jsonl (djghosh13/geneval).
GENEVAL_BENCH = {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}
GENEVAL_POSITION = {"tag": "position", "include": [{"class": "train", "count": 1},
                                                   {"class": "potted plant", "count": 1, "position": ["right of", 0]}],
                    "prompt": "a photo of a potted plant right of a train"}


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return MMaDAPipeline.from_pretrained(BUILTIN_MODELS["mmada-tiny"])


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    return write_prompts(tmp_path_factory.mktemp("prompts") / "evaluation_metadata.jsonl", world_geneval_prompts(2))


@pytest.fixture(scope="module")
def generated(pipe, prompts_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("geneval") / "images"
    return out, generate_geneval(pipe, GenevalConfig(prompts_file, out, images_per_prompt=2, judge=True, image=FAST))


def _official_walk(imagedir):
    """evaluate_images.py's `main` loop, transcribed: which (metadata, image path) pairs it would score."""
    found = []
    for subfolder in os.listdir(imagedir):
        folderpath = os.path.join(imagedir, subfolder)
        if not os.path.isdir(folderpath) or not subfolder.isdigit():
            continue
        with open(os.path.join(folderpath, "metadata.jsonl")) as fp:
            metadata = json.load(fp)
        for imagename in os.listdir(os.path.join(folderpath, "samples")):
            imagepath = os.path.join(folderpath, "samples", imagename)
            if os.path.isfile(imagepath) and re.match(r"\d+\.png", imagename):
                found.append((metadata, os.path.relpath(imagepath, imagedir)))
    return sorted(found, key=lambda pair: pair[1])


# ---- the world's prompts as GenEval metadata ---------------------------------------------------
def test_world_prompts_round_trip_through_geneval_metadata(tmp_path):
    suite = evaluation_suite(per_group=50).t2i
    rows = world_geneval_prompts(50)
    assert len(rows) == len(suite) == 300
    read = read_prompts(write_prompts(tmp_path / "p.jsonl", rows))
    assert [p.metadata for p in read] == rows and [p.index for p in read] == list(range(300))
    for example, meta in zip(suite, rows):
        assert meta["prompt"] == example.caption and meta["tag"] == example.spec.category
        assert prompt_from_metadata(meta) == example.spec
        assert prompt_from_metadata(meta).caption == meta["prompt"]
        # exact counts: every include group is excluded at count + 1 (GenEval's counting form)
        assert meta["exclude"] == [{k: v + 1 if k == "count" else v for k, v in group.items() if k != "position"}
                                   for group in meta["include"]]


def test_relation_sits_on_the_object_that_stands_in_it_as_in_geneval():
    """GenEval: "a potted plant right of a train" = include [train, potted plant + position [right of, 0]]."""
    meta = prompt_metadata(parse_caption("a red triangle to the right of a green circle"))
    assert meta == {"tag": "position",
                    "include": [{"class": "circle", "count": 1, "color": "green"},
                                {"class": "triangle", "count": 1, "color": "red", "position": ["right of", 0]}],
                    "exclude": [{"class": "circle", "count": 2, "color": "green"},
                                {"class": "triangle", "count": 2, "color": "red"}],
                    "prompt": "a red triangle to the right of a green circle"}
    assert [g["class"] for g in GENEVAL_POSITION["include"]] == ["train", "potted plant"]  # the same shape of line
    counting = prompt_metadata(parse_caption("three circles"))  # no colour: any colour, as GenEval's class count
    assert counting["include"] == [{"class": "circle", "count": 3}] and counting["exclude"] == [
        {"class": "circle", "count": 4}]
    assert prompt_from_metadata(counting) == parse_caption("three circles")


@pytest.mark.parametrize(("meta", "message"), [
    (GENEVAL_BENCH, r"class 'bench' is not a tiny-world shape.*GenEval's evaluator"),
    (GENEVAL_POSITION, r"class 'train' is not a tiny-world shape"),
    ({"tag": "counting", "include": [{"class": "circle", "count": 2}], "prompt": "two circles"},
     r"'exclude' must be \[\{'class': 'circle', 'count': 3\}\] \(world prompts mean exact counts\)"),
    ({"tag": "lighting", "include": [{"class": "circle", "count": 1}], "exclude": [{"class": "circle", "count": 2}],
      "prompt": "a circle"}, "tag 'lighting' is not one of GenEval's categories"),
    ({"tag": "position", "include": [{"class": "circle", "count": 1, "position": ["above", 1]},
                                     {"class": "square", "count": 1}], "prompt": "x"}, "may only sit on the second"),
    ({"tag": "single_object", "include": [{"class": "circle", "count": 1, "color": "teal"}], "prompt": "x"},
     "color 'teal' is not a tiny-world colour"),
])
def test_metadata_the_world_judge_cannot_read_is_refused(meta, message):
    with pytest.raises(ValueError, match=message):
        prompt_from_metadata(meta)


# ---- generation: the layout GenEval's evaluator reads ------------------------------------------
def test_layout_matches_the_official_evaluators_names(generated, prompts_file):
    out, run = generated
    lines = [line for line in prompts_file.read_text().splitlines() if line.strip()]
    assert sorted(os.listdir(out)) == [f"{i:05}" for i in range(len(lines))] == [f"{i:0>5}" for i in range(12)]
    for i, line in enumerate(lines):
        folder = out / f"{i:05}"
        assert (folder / "metadata.jsonl").read_text().strip() == line
        with open(folder / "metadata.jsonl") as fp:
            assert json.load(fp) == json.loads(line)
        names = sorted(os.listdir(folder / "samples"))
        assert names == ["00000.png", "00001.png"] and all(re.fullmatch(r"\d{5}\.png", n) for n in names)
        for name in names:
            with Image.open(folder / "samples" / name) as image:
                assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))
    walked = _official_walk(out)
    assert [file for _, file in walked] == [o["file"] for o in run.outputs]
    assert [meta for meta, _ in walked] == [json.loads(lines[o["index"]]) for o in run.outputs]
    assert [(o["index"], o["sample"]) for o in run.outputs] == [(i, k) for i in range(12) for k in range(2)]
    assert run.meter.images == 24 and run.meter.sampler_calls == 12  # one call per prompt
    assert run.settings["images_per_prompt"] == 2 and run.settings["image"].timesteps == 4


def test_same_seed_same_images_whatever_the_other_prompts(pipe, generated, prompts_file, tmp_path):
    out, run = generated
    again = generate_geneval(pipe, GenevalConfig(prompts_file, tmp_path / "a", images_per_prompt=2, judge=True,
                                                 image=FAST))
    assert again.scores == run.scores and again.outputs == run.outputs
    for o in run.outputs:
        assert (tmp_path / "a" / o["file"]).read_bytes() == (out / o["file"]).read_bytes()
    alone = generate_geneval(pipe, GenevalConfig(prompts_file, tmp_path / "b", images_per_prompt=2, limit=1,
                                                 image=FAST))
    assert alone.scores == {} and [o["file"] for o in alone.outputs] == ["00000/samples/00000.png",
                                                                         "00000/samples/00001.png"]
    assert all((tmp_path / "b" / o["file"]).read_bytes() == (out / o["file"]).read_bytes() for o in alone.outputs)
    chunked = generate_geneval(pipe, GenevalConfig(prompts_file, tmp_path / "d", images_per_prompt=2, limit=1,
                                                   batch_size=1, image=FAST))
    assert chunked.meter.sampler_calls == 2 and [o["file"] for o in chunked.outputs] == [
        o["file"] for o in alone.outputs]
    other = generate_geneval(pipe, GenevalConfig(prompts_file, tmp_path / "c", images_per_prompt=2, limit=1, seed=1,
                                                 image=FAST))
    assert any((tmp_path / "c" / o["file"]).read_bytes() != (out / o["file"]).read_bytes() for o in other.outputs)


def test_judged_generation_agrees_with_judging_the_arrays(generated):
    out, run = generated
    specs = {i: e.spec for i, e in enumerate(evaluation_suite(per_group=2).t2i)}
    for o in run.outputs:
        verdict = score_t2i(np.asarray(Image.open(out / o["file"]).convert("RGB")), specs[o["index"]])
        assert (o["correct"], o["reasons"]) == (verdict.correct, list(verdict.reasons))
    assert run.scores == {"geneval": geneval_summary(run.outputs)}
    assert all(0.0 <= v <= 1.0 for v in run.scores["geneval"].values())


# ---- the world judge on a hand-made layout -----------------------------------------------------
def _layout(root, examples, images):
    for i, (example, image) in enumerate(zip(examples, images)):
        (root / f"{i:05}" / "samples").mkdir(parents=True)
        (root / f"{i:05}" / "metadata.jsonl").write_text(json.dumps(prompt_metadata(example.spec, example.caption)))
        Image.fromarray(image).save(root / f"{i:05}" / "samples" / "00000.png")


def test_world_judge_scores_the_layout_like_the_arrays(tmp_path):
    """Ground-truth renders are right; each prompt's render shown to the next prompt is (mostly) wrong."""
    examples = evaluation_suite(per_group=2).t2i
    images = [e.image for e in examples[:6]] + [examples[i - 1].image for i in range(6, 12)]
    _layout(tmp_path, examples, images)
    (tmp_path / "notes").mkdir()  # not digit-named: skipped, as the official evaluator skips it
    (tmp_path / "00000" / "samples" / "grid.png").write_bytes(b"")  # not \d+.png: skipped
    run = score_geneval_folder(tmp_path)
    verdicts = [score_t2i(image, example.spec) for example, image in zip(examples, images)]
    assert [(o["file"], o["correct"], o["reasons"]) for o in run.outputs] == [
        (f"{i:05}/samples/00000.png", v.correct, list(v.reasons)) for i, v in enumerate(verdicts)]
    assert all(v.correct for v in verdicts[:6]) and not all(v.correct for v in verdicts[6:])
    scores = run.scores["geneval"]
    tags = {}
    for example, verdict in zip(examples, verdicts):
        tags.setdefault(example.spec.category, []).append(verdict.score)
    per_tag = {tag: sum(v) / len(v) for tag, v in tags.items()}
    assert {k: scores[k] for k in per_tag} == per_tag
    assert scores["overall"] == pytest.approx(sum(per_tag.values()) / len(per_tag))


def test_summary_is_geneval_summary_scores():
    def rec(tag, correct, prompt):
        return {"tag": tag, "correct": correct, "metadata": prompt}

    outputs = [rec("a", True, "p1"), rec("a", False, "p1"), rec("a", False, "p2"), rec("b", True, "p3")]
    assert geneval_summary(outputs) == pytest.approx({"a": 1 / 3, "b": 1.0, "overall": 2 / 3, "correct images": 0.5,
                                                      "correct prompts": 2 / 3})


# ---- refused input -----------------------------------------------------------------------------
def test_bad_inputs_are_refused_before_sampling(tmp_path, prompts_file):
    never = object()  # any use of the pipeline would raise AttributeError
    real = write_prompts(tmp_path / "geneval.jsonl", [GENEVAL_POSITION, GENEVAL_BENCH])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(real))}:1: class 'train' is not a tiny-world shape"):
        generate_geneval(never, GenevalConfig(real, tmp_path / "out", judge=True))  # type: ignore[arg-type]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GENEVAL_BENCH) + "\n\n" + json.dumps({"tag": "single_object"}) + "\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}:3: missing key 'prompt'$"):
        generate_geneval(never, GenevalConfig(bad, tmp_path / "out"))  # type: ignore[arg-type]
    (tmp_path / "used" / "00003").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"already holds prompt folders \(00003, ...\)"):
        generate_geneval(never, GenevalConfig(prompts_file, tmp_path / "used"))  # type: ignore[arg-type]
    layout = tmp_path / "layout"
    (layout / "00000" / "samples").mkdir(parents=True)
    (layout / "00000" / "metadata.jsonl").write_text(json.dumps(GENEVAL_BENCH))
    with pytest.raises(ValueError, match=r"00000/metadata.jsonl: class 'bench' is not a tiny-world shape"):
        score_geneval_folder(layout)
    with pytest.raises(ValueError, match="holds no GenEval prompt folders"):
        score_geneval_folder(tmp_path / "used" / "00003")
    with pytest.raises(ValueError, match="`images_per_prompt` must be >= 1"):
        GenevalConfig(prompts_file, tmp_path / "out", images_per_prompt=0)
    with pytest.raises(ValueError, match="`batch_size` must be >= 1"):
        GenevalConfig(prompts_file, tmp_path / "out", batch_size=0)
