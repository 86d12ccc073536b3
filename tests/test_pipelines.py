"""The task pipeline on the fixture checkpoint: parity with the official samplers, and its contracts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mmada import ImageSampling, MMaDAPipeline, TextSampling
from mmada.image_tokenizer import region_to_grid
from mmada.sampling import last_step


@pytest.fixture(scope="module")
def pipe(reference_dir):
    return MMaDAPipeline.from_pretrained(
        reference_dir / "mmada_a", image_tokenizer=reference_dir / "magvitv2_tiny", max_text_len=16
    )


@pytest.fixture(scope="module")
def expected(reference_dir):
    folder = reference_dir / "mmada_a"
    return {
        **load_file(folder / "expected_sampling.safetensors"),
        **load_file(folder / "expected_t2i.safetensors"),
        "cases": json.loads((folder / "cases.json").read_text()),
    }


def test_generate_reproduces_official_text_sampler(pipe, expected):
    # Row 0 of the fixture batch is unpadded, so the pipeline's single-row prompt is the same sequence.
    steps = list(pipe.iter_generate("What is two plus three?", gen_length=16, steps=8, block_length=8,
                                    temperature=0, early_stop=False))
    assert len(steps) == 8
    assert torch.equal(steps[-1].step.tokens[0, -16:], expected["mmu_2blocks.output"][0, -16:])
    result = pipe.generate("What is two plus three?", gen_length=16, steps=8, block_length=8, temperature=0,
                           early_stop=False)
    assert torch.equal(result.tokens, expected["mmu_2blocks.output"][0, -16:])
    assert "░" in steps[0].previews[0] and "░" not in steps[-1].previews[0]


def test_understand_reproduces_official_mmu(pipe, expected, reference_dir):
    codes = load_file(reference_dir / "magvitv2_tiny" / "expected_vq.safetensors")["vq_get_code.indices"][:1]
    result = pipe.understand(codes, "Describe the image in detail.", gen_length=8, steps=4, block_length=8,
                             temperature=0, early_stop=False)
    assert torch.equal(result.tokens, expected["mmu_image.output"][0, -8:])


def test_understand_accepts_images(pipe):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))
    result = pipe.understand(image, "What is this?", gen_length=8, steps=4, block_length=8, temperature=0)
    assert result.tokens.shape == (8,)


def test_text_to_image_reproduces_official_maskgit(pipe, expected):
    prompts = expected["cases"]["extra"]["t2i_prompts"]
    steps = list(pipe.iter_text_to_image(prompts, generator=torch.Generator().manual_seed(42), timesteps=6,
                                         guidance_scale=2.0))
    assert len(steps) == 6
    assert torch.equal(steps[-1].tokens, expected["t2i_cfg_cosine.sampled_ids"])
    images = pipe.text_to_image(prompts, generator=torch.Generator().manual_seed(42), timesteps=6, guidance_scale=2.0)
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    decoded = torch.from_numpy(np.array(images[0])).float() / 127.5 - 1
    reference = expected["t2i_cfg_cosine.decoded_images"][0].permute(1, 2, 0).clamp(-1, 1)
    assert (decoded - reference).abs().max() < 1 / 127.5 + 1e-4  # one uint8 step


def test_inpaint_keeps_codes_outside_the_region(pipe):
    codes = torch.arange(16) * 7 % 128
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[:, :2] = True
    last = last_step(pipe.iter_inpaint(codes, region, "a red cube", generator=torch.Generator().manual_seed(0),
                                       timesteps=4))
    out = last.tokens.view(4, 4)
    assert torch.equal(out[~region], codes.view(4, 4)[~region])
    assert pipe.inpaint(codes, region, "a red cube").size == (64, 64)


def test_extrapolate_grows_the_image(pipe):
    codes = torch.arange(16) * 5 % 128
    image = pipe.extrapolate(codes, "a red cube", pad=(0, 0, 0, 2), timesteps=4)
    assert image.size == (96, 64)


def test_infill_keeps_the_context(pipe):
    text = pipe.infill("hello [BLANK] world", blank_length=4, temperature=0)
    assert text.startswith("hello") and text.endswith(" world") and "░" not in text


@pytest.mark.parametrize("setting", [dict(cfg_scale=1.0), dict(threshold=0.9), dict(block_length=4),
                                     dict(gen_length=8), dict(early_stop=False)])
def test_infill_refuses_the_text_settings_it_does_not_use(pipe, setting):
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"sampler setting '{name}' is not supported by infill"):
        pipe.infill("hello [BLANK] world", blank_length=4, **setting)


def test_settings_objects_and_keyword_overrides_agree(pipe):
    settings = TextSampling(gen_length=16, steps=8, block_length=8, temperature=0, early_stop=False)
    by_object = pipe.generate("What is two plus three?", sampling=settings)
    by_keywords = pipe.generate("What is two plus three?", gen_length=16, steps=8, block_length=8, temperature=0,
                                early_stop=False)
    assert torch.equal(by_object.tokens, by_keywords.tokens)
    over = pipe.generate("What is two plus three?", sampling=settings, gen_length=8, block_length=8, steps=4)
    assert over.tokens.shape == (8,)  # keywords apply over the given object
    image = ImageSampling(timesteps=2, guidance_scale=0.0)
    kw = dict(generator=torch.Generator().manual_seed(0))
    first = last_step(pipe.iter_text_to_image("a red cube", sampling=image, **kw)).tokens
    kw = dict(generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, last_step(pipe.iter_text_to_image("a red cube", timesteps=2, guidance_scale=0.0,
                                                                **kw)).tokens)


def test_region_forms_agree():
    box = region_to_grid((0, 0, 32, 64), 4, 64)
    mask = Image.new("L", (64, 64))
    mask.paste(255, (0, 0, 32, 64))
    assert torch.equal(box, region_to_grid(mask, 4, 64))
    assert box[:, :2].all() and not box[:, 2:].any()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.generate("hi", gen_lenght=8), "unknown sampler setting 'gen_lenght'"),
        (lambda p: p.generate("hi", gen_length=10, block_length=4, steps=4), "`gen_length` \\(10\\)"),
        (lambda p: p.text_to_image("a", timesteps=4, guidance_scale=-1.0), "guidance_scale"),
        (lambda p: p.infill("no blanks here"), "no \\[BLANK\\]"),
        (lambda p: p.inpaint(torch.zeros(16, dtype=torch.long), (0, 0, 100, 100), "x"), "inside the 64x64"),
        (lambda p: p.inpaint(torch.zeros(16, dtype=torch.long), torch.zeros(4, 4), "x"), "region is empty"),
        (lambda p: p.understand(torch.full((16,), 999), "q"), "image codes must be 16 values"),
        (lambda p: p.understand(b"not an image", "q"), "not a readable image"),
        (lambda p: p.chat([{"role": "wizard", "content": "hi"}]), "role"),
    ],
)
def test_bad_requests_are_refused(pipe, call, message):
    with pytest.raises(ValueError, match=message):
        call(pipe)


def test_batched_calls_equal_calls_one_by_one(pipe):
    settings = dict(gen_length=16, steps=8, block_length=8, temperature=0, early_stop=False)
    questions = ["What is two plus three?", "Name a color."]
    batched = pipe.generate_batch(questions, **settings)
    assert [r.tokens.tolist() for r in batched] == [pipe.generate(q, **settings).tokens.tolist() for q in questions]
    codes = [torch.arange(16) * 3 % 128, torch.arange(16) * 5 % 128]
    batched = pipe.understand_batch(codes, ["one", "another question"], **settings)
    alone = [pipe.understand(c, q, **settings) for c, q in zip(codes, ["one", "another question"])]
    assert [r.tokens.tolist() for r in batched] == [r.tokens.tolist() for r in alone]
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        pipe.understand_batch(codes, ["one"])
