"""Named sampling presets (`sampling.PRESETS` for text, `IMAGE_PRESETS` for images): what each sets,
`exact` = today's outputs, the order preset -> keywords, and the pipeline / CLI entry points."""

from dataclasses import asdict

import pytest
import torch

import mmada.pipelines
from mmada.cli import main
from mmada.pipelines import MMaDAPipeline
from mmada.sampling import IMAGE_PRESETS, PRESETS, ImageSampling, InfillSampling, TextSampling, apply_preset, last_step

PROMPTS = ("What is two plus three?", "Name a colour.")


@pytest.fixture(scope="module")
def pipe() -> MMaDAPipeline:
    return MMaDAPipeline.from_pretrained("mmada-tiny")


def test_the_presets_and_their_fields():
    assert tuple(PRESETS) == tuple(IMAGE_PRESETS) == ("exact", "fast", "fastest")
    assert dict(PRESETS["exact"]) == {"cache": "none", "cache_refresh": 0, "cache_keep": "none", "threshold": None,
                                      "factor": None, "entropy_bound": None, "early_commit": None}
    assert PRESETS["fast"]["cache"] == "delayed" and PRESETS["fast"]["threshold"] is None
    assert PRESETS["fastest"]["cache"] == "delayed" and PRESETS["fastest"]["threshold"] == 0.9
    assert dict(IMAGE_PRESETS["exact"]) == {"cache": "none", "cache_reuse": 0.0, "cache_refresh": 0}
    assert IMAGE_PRESETS["fast"]["cache"] == IMAGE_PRESETS["fastest"]["cache"] == "settled"
    for name in PRESETS:  # every preset is a valid setting of its kind
        TextSampling(**PRESETS[name])
        ImageSampling(**IMAGE_PRESETS[name])


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_sets_exactly_its_fields(name):
    base = TextSampling(gen_length=64, steps=32, block_length=16, temperature=0.5, cfg_scale=1.0,
                        threshold=0.5, cache="prefix", cache_refresh=3, early_stop=False)
    after = asdict(apply_preset(base, name))
    changed = {k for k, v in asdict(base).items() if after[k] != v}
    assert changed <= set(PRESETS[name])
    assert {k: after[k] for k in PRESETS[name]} == dict(PRESETS[name])
    assert apply_preset(base, None) is base


def _tokens(pipe, preset=None, **overrides):
    steps = pipe.iter_generate(PROMPTS[0], preset=preset, **overrides) if preset else pipe.iter_generate(
        PROMPTS[0], **overrides)
    return last_step(steps).step.tokens


def test_exact_equals_the_default_token_for_token(pipe):
    assert pipe.text_settings(preset="exact") == pipe.text_settings()  # the built-in defaults are exact
    assert torch.equal(_tokens(pipe, "exact"), _tokens(pipe))
    exact = pipe.generate_batch(PROMPTS, preset="exact")
    assert [r.text for r in exact] == [r.text for r in pipe.generate_batch(PROMPTS)]
    image = torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()
    assert pipe.understand(image, "What is it?", preset="exact").text == pipe.understand(image, "What is it?").text


@pytest.mark.parametrize("name", ["fast", "fastest"])
def test_fast_presets_run_in_every_text_method(pipe, name):
    assert pipe.text_settings(preset=name).cache == "delayed"
    assert isinstance(pipe.generate(PROMPTS[0], preset=name).text, str)
    assert isinstance(pipe.chat([{"role": "user", "content": PROMPTS[1]}], preset=name).text, str)
    assert len(pipe.generate_batch(PROMPTS, preset=name)) == 2
    image = torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()
    assert isinstance(pipe.understand(image, "What is it?", preset=name).text, str)
    assert len(pipe.understand_batch([image, image], ["What is it?", "Colour?"], preset=name)) == 2


def test_keywords_override_a_preset(pipe):
    settings = pipe.text_settings(preset="fastest", threshold=0.7, cache="prefix")
    assert (settings.threshold, settings.cache) == (0.7, "prefix")
    given = TextSampling(gen_length=64, steps=32, block_length=32, temperature=0.0)
    settings = pipe.text_settings(given, preset="fast", steps=16)
    assert (settings.gen_length, settings.steps, settings.cache) == (64, 16, "delayed")


def test_unknown_preset_is_refused(pipe, capsys):
    with pytest.raises(ValueError, match="unknown sampling preset 'turbo'; choose from exact, fast, fastest"):
        pipe.generate(PROMPTS[0], preset="turbo")
    with pytest.raises(ValueError, match="unknown sampling preset"):
        apply_preset(TextSampling(), "Fast")
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "x", "--preset", "turbo", "-q"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--preset" in err and "exact" in err and "fastest" in err


@pytest.mark.parametrize("argv", [["generate", "hi"], ["chat"], ["understand", "IMAGE", "What is it?"]])
def test_the_cli_flag_reaches_the_sampler(argv, monkeypatch, tmp_path, capsys):
    seen: list[TextSampling] = []
    real = mmada.pipelines.iter_sample_text

    def spy(model, input_ids, settings, **kwargs):
        seen.append(settings)
        return real(model, input_ids, settings, **kwargs)

    monkeypatch.setattr(mmada.pipelines, "iter_sample_text", spy)
    lines = iter(["hello", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    if "IMAGE" in argv:
        from PIL import Image

        Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
        argv = [str(tmp_path / "a.png") if a == "IMAGE" else a for a in argv]
    assert main([*argv, "-q", "--preset", "fastest", "--gen-length", "32", "--steps", "8", "--block-length",
                 "16"]) == 0
    assert seen and all(s.cache == "delayed" and s.threshold == 0.9 and s.steps == 8 for s in seen)


def test_cli_flags_override_the_preset(monkeypatch, capsys):
    seen: list[TextSampling] = []
    real = mmada.pipelines.iter_sample_text
    monkeypatch.setattr(mmada.pipelines, "iter_sample_text",
                        lambda model, ids, settings, **kw: seen.append(settings) or real(model, ids, settings, **kw))
    assert main(["generate", "hi", "-q", "--preset", "fastest", "--threshold", "0.8", "--cache", "prefix"]) == 0
    assert (seen[0].threshold, seen[0].cache) == (0.8, "prefix")
    assert main(["generate", "hi", "-q"]) == 0  # no preset: the model's own (exact) settings
    assert (seen[1].threshold, seen[1].cache) == (None, "none")


def test_eval_takes_a_preset(monkeypatch, capsys, tmp_path):
    seen: list[TextSampling] = []
    real = mmada.pipelines.iter_sample_text
    monkeypatch.setattr(mmada.pipelines, "iter_sample_text",
                        lambda model, ids, settings, **kw: seen.append(settings) or real(model, ids, settings, **kw))
    assert main(["eval", "world", "--preset", "fast", "--tasks", "vqa", "--limit", "1", "-q", "--no-hash",
                 "--out", str(tmp_path / "run")]) == 0
    assert seen and all(s.cache == "delayed" and s.temperature == 0.0 for s in seen)


# ---- image presets ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(IMAGE_PRESETS))
def test_each_image_preset_sets_exactly_its_fields(name):
    base = ImageSampling(timesteps=8, guidance_scale=1.0, cache="prompt", cache_refresh=3)
    after = asdict(apply_preset(base, name))
    assert {k for k, v in asdict(base).items() if after[k] != v} <= set(IMAGE_PRESETS[name])
    assert {k: after[k] for k in IMAGE_PRESETS[name]} == dict(IMAGE_PRESETS[name])
    with pytest.raises(ValueError, match="unknown sampling preset"):
        apply_preset(InfillSampling(steps=4), name)  # infilling has no presets


def test_image_presets_in_the_pipeline(pipe):
    assert pipe.image_settings(preset="exact") == pipe.image_settings()
    seeded = [pipe.text_to_image("a red circle", preset=p, generator=torch.Generator().manual_seed(0))[0]
              for p in (None, "exact")]
    assert seeded[0].tobytes() == seeded[1].tobytes()  # exact = the default, pixel for pixel
    for name in ("fast", "fastest"):
        assert pipe.image_settings(preset=name).cache == "settled"
        assert pipe.text_to_image("a red circle", preset=name)[0].size == seeded[0].size
    assert pipe.image_settings(preset="fastest", cache_reuse=0.5).cache_reuse == 0.5  # keywords win


def test_the_cli_image_preset_reaches_the_sampler(monkeypatch, tmp_path, capsys):
    seen: list[ImageSampling] = []
    real = mmada.pipelines.iter_sample_t2i
    monkeypatch.setattr(mmada.pipelines, "iter_sample_t2i",
                        lambda model, layout, settings, *a, **kw: seen.append(settings) or real(model, layout,
                                                                                               settings, *a, **kw))
    assert main(["t2i", "a red circle", "-q", "--preset", "fastest", "--timesteps", "4", "-o",
                 str(tmp_path / "a.png")]) == 0
    assert seen and seen[0].cache == "settled" and seen[0].cache_reuse == 0.9 and seen[0].timesteps == 4
