"""MaskGIT loop and mask schedules: properties on a mock denoiser, parity with the official t2i.

The parity cases (fixture `mmada_a/expected_t2i.safetensors`) were written by the official
`t2i_generate` on the tiny checkpoint A with a seeded `torch.Generator`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import BOS, EOI, EOS, MASK, MOCK_VOCAB, PAD, SOI, T2I, K, MockDenoiser, t2i_layout
from mmada.diffusion.schedules import get_schedule
from mmada.prompting import TokenLayout
from mmada.sampling import ImageSampling, guide, iter_sample_t2i, sample_t2i
from mmada.sampling.image import annealed_temperatures, remask_count

N = 9  # a 3 x 3 grid of image tokens (MOCK_VOCAB: codes at 22..37)


def layout(captions: list[list[int]], text_len: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """t2i_gen rows `[PAD]* <|t2i|> caption <|soi|> [MASK]*N <|eoi|>` and their padding masks."""
    rows, masks = [], []
    for caption in captions:
        text = [T2I, BOS, *caption, EOS]
        pad = text_len - len(text)
        rows.append([PAD] * pad + text + [SOI] + [MASK] * N + [EOI])
        masks.append([0] * pad + [1] * (len(text) + N + 2))
    return torch.tensor(rows), torch.tensor(masks)


def t2i_settings(**kw) -> ImageSampling:
    """The mock's settings: 5 steps without guidance, `kw` replacing any."""
    return ImageSampling(**(dict(timesteps=5, guidance_scale=0.0) | kw))


def sample(model, ids, mask, settings, *, uncond=None, vocab=MOCK_VOCAB, iterate=False, **kw):
    """`sample_t2i` (or the list of `iter_sample_t2i` steps) on raw mock rows with N image tokens."""
    run = iter_sample_t2i if iterate else sample_t2i
    out = run(model, t2i_layout(ids, mask, N), settings, vocab, uncond=as_layout(uncond), **kw)
    return list(out) if iterate else out


def as_layout(uncond: dict | None) -> TokenLayout | None:
    return None if uncond is None else t2i_layout(uncond["uncond_input_ids"], uncond["uncond_attention_mask"], N)


def cfg_inputs():
    ids, mask = layout([[5, 6], [7, 8, 9]])
    un_ids, un_mask = layout([[], []])
    return ids, mask, dict(uncond_input_ids=un_ids, uncond_attention_mask=un_mask)


# ---- properties ---------------------------------------------------------------------------------


def test_codes_fill_the_image_and_follow_the_cosine_schedule():
    ids, mask = layout([[5, 6], [7, 8, 9]])
    steps = sample(MockDenoiser(), ids, mask, t2i_settings(), generator=torch.Generator().manual_seed(0),
                   iterate=True)
    assert len(steps) == 5
    for s in steps:
        assert s.tokens.shape == (2, N) and ((s.tokens >= 0) & (s.tokens < K)).all()
        expected_masked = max(1, min(N - 1, math.floor(N * math.cos(math.pi / 2 * (s.step + 1) / 5))))
        if s.step == 0:
            assert (~s.committed).sum(dim=1).tolist() == [expected_masked] * 2
    assert (~steps[-1].committed).sum(dim=1).tolist() == [1, 1]  # float32 cos(pi/2) < 0 -> clamped to 1
    for prev, cur in itertools.pairwise(steps):  # kept codes stay kept and unchanged
        assert (cur.committed | ~prev.committed).all()
        assert torch.equal(cur.tokens[prev.committed], prev.tokens[prev.committed])


def test_logits_only_at_image_positions_and_guided_batch_layout():
    ids, mask, uncond = cfg_inputs()
    model = MockDenoiser()
    sample(model, ids, mask, t2i_settings(guidance_scale=2.0), uncond=uncond,
           generator=torch.Generator().manual_seed(0))
    length = ids.shape[1]
    for call_ids, call_mask, positions in model.calls:
        assert positions == slice(length - N - 1, length - 1)
        assert torch.equal(call_ids[2:, :6], uncond["uncond_input_ids"][:, :6])  # null-prompt text part
        assert torch.equal(call_ids[2:, 6:], call_ids[:2, 6:])  # same image part as the cond rows
        assert torch.equal(call_mask, torch.cat([mask, uncond["uncond_attention_mask"]]).bool())


def test_iterator_and_function_agree_and_are_deterministic():
    ids, mask, uncond = cfg_inputs()
    settings = t2i_settings(guidance_scale=1.5)

    def seeded(seed):
        return sample(MockDenoiser(), ids, mask, settings, uncond=uncond, generator=torch.Generator().manual_seed(seed))

    last = sample(MockDenoiser(), ids, mask, settings, uncond=uncond, generator=torch.Generator().manual_seed(4),
                  iterate=True)[-1]
    assert torch.equal(last.tokens, seeded(4)) and torch.equal(seeded(4), seeded(4))
    assert not torch.equal(seeded(4), seeded(5))
    with torch.random.fork_rng():
        torch.manual_seed(4)
        implicit = sample(MockDenoiser(), ids, mask, settings, uncond=uncond)
    assert torch.equal(implicit, seeded(4))  # the global generator behaves like a seeded one


def test_input_is_not_modified():
    ids, mask = layout([[5, 6]])
    before = ids.clone()
    sample(MockDenoiser(), ids, mask, t2i_settings())
    assert torch.equal(ids, before)


def test_temperature_annealing_variants():
    assert annealed_temperatures(1.0, 4, "linear") == [0.75, 0.5, 0.25, 0.0]
    assert annealed_temperatures(1.0, 4, "compounding") == pytest.approx([0.75, 0.375, 0.09375, 0.0])
    ids, mask = layout([[5, 6]])
    settings = t2i_settings(timesteps=4, temperature=3.0, temperature_schedule="linear")
    linear = sample(MockDenoiser(), ids, mask, settings, generator=torch.Generator().manual_seed(1))
    assert linear.shape == (1, N)


def test_remask_count_clamps():
    unknown = torch.ones(2, 10, dtype=torch.bool)
    n = unknown.sum(dim=1, keepdim=True)
    assert remask_count(get_schedule("cosine"), 1.0, n, unknown).tolist() == [[1], [1]]
    assert remask_count(get_schedule("linear"), 0.0, n, unknown).tolist() == [[9], [9]]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(guidance_scale=2.0), r"`uncond` \(the null-prompt layout\) is required when `guidance_scale` \(2.0\)"),
        (dict(timesteps=0), r"`timesteps` \(0\) must be >= 1"),
        (dict(temperature=-1.0), r"`temperature`"),
        (dict(temperature_schedule="cosine"), r"`temperature_schedule`"),
        (dict(schedule="cosinus"), r"schedule"),
        (dict(vocab=dataclasses.replace(MOCK_VOCAB, codebook_size=4)), r"image positions of the layout"),
    ],
)
def test_invalid_settings_are_refused_by_name(kw, message):
    ids, mask = layout([[5, 6]])
    ids[0, -3] = MOCK_VOCAB.image_offset + 10  # a given code: only valid while codebook_size > 10
    vocab = kw.pop("vocab", MOCK_VOCAB)
    # settings when the ImageSampling is made; tensors when the iterator is made, before any step
    with pytest.raises(ValueError, match=message):
        iter_sample_t2i(MockDenoiser(), t2i_layout(ids, mask, N), t2i_settings(**kw), vocab)


# ---- schedules ----------------------------------------------------------------------------------


def test_schedules_reproduce_the_official_formulas():
    r = torch.linspace(0, 1, 11)
    torch.testing.assert_close(get_schedule("cosine")(r), torch.cos(r * math.pi * 0.5), rtol=0, atol=0)
    assert get_schedule("cosine")(1.0).item() < 0  # float32 cos(pi / 2) = -4.37e-8, as the official
    torch.testing.assert_close(get_schedule("linear")(r), (1 - r).clamp(1e-6, 1.0), rtol=0, atol=0)
    torch.testing.assert_close(get_schedule("pow2")(r), get_schedule("pow", exponent=2)(r), rtol=0, atol=0)
    torch.testing.assert_close(get_schedule("pow2")(r), (1 - r**2).clamp(1e-6, 1.0), rtol=0, atol=0)
    sig = get_schedule("sigmoid", start=-3, end=3, tau=1.0)(r)
    assert sig[0].item() == pytest.approx(1.0) and sig[-1].item() == pytest.approx(1e-6)
    assert (sig[1:] <= sig[:-1]).all()


@pytest.mark.parametrize(("name", "kw"), [("cosinus", {}), ("cosine", {"tau": 1.0}), ("pow", {}),
                                          ("powx", {}), ("sigmoid", {"beta": 2.0})])
def test_bad_schedules_are_refused(name, kw):
    with pytest.raises(ValueError, match="schedule"):
        get_schedule(name, **kw)


# ---- parity with the official sampler -----------------------------------------------------------

T2I_CASES = ["t2i_cfg_cosine", "t2i_nocfg_cosine", "t2i_cfg_linear"]


class Recorder:
    """Wraps the model; records the ids, masks and logits of every call."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, []

    def __call__(self, input_ids, attention_mask=None, *, positions=None):
        logits = self.model(input_ids, attention_mask, positions=positions)
        self.calls.append((input_ids.clone(), attention_mask, positions, logits))
        return logits


@pytest.fixture(scope="module")
def reference_model(reference_dir):
    mmada = pytest.importorskip("mmada")
    return mmada.load_model(reference_dir / "mmada_a")


@pytest.fixture(scope="module")
def reference_vocab(reference_dir, reference_model):
    from mmada.prompting import TextTokenizer, vocab_for

    return vocab_for(TextTokenizer.from_pretrained(reference_dir / "mmada_a"), reference_model)


@pytest.mark.parametrize("name", T2I_CASES)
def test_official_t2i_parity(name, reference_dir, reference_model, reference_vocab):
    folder = reference_dir / "mmada_a"
    args = {c["name"]: c for c in json.loads((folder / "cases.json").read_text())["cases"]}[name]["args"]
    data = load_file(folder / "expected_t2i.safetensors")
    offset, n = json.loads((folder / "cases.json").read_text())["vocab"]["image_token_offset"], args["seq_len"]
    ids, mask = data[f"{name}.input_ids"], data[f"{name}.attention_mask"]
    model = Recorder(reference_model)
    settings = ImageSampling(timesteps=args["timesteps"], guidance_scale=args["guidance_scale"],
                             temperature=args["temperature"], schedule=args["schedule"])
    uncond = None
    if f"{name}.uncond_input_ids" in data:
        uncond = t2i_layout(data[f"{name}.uncond_input_ids"], data[f"{name}.uncond_attention_mask"], n)
    steps = list(iter_sample_t2i(model, t2i_layout(ids, mask, n), settings, reference_vocab, uncond=uncond,
                                 generator=torch.Generator().manual_seed(args["generator_seed"])))
    assert torch.equal(steps[-1].tokens, data[f"{name}.sampled_ids"])
    assert torch.equal(torch.stack([c[0] for c in model.calls]), data[f"{name}.trace_inputs"])
    image, vocab = slice(ids.shape[1] - n - 1, ids.shape[1] - 1), slice(offset, offset + args["codebook_size"])
    final = ids.clone()
    final[:, image] = torch.where(steps[-1].committed, steps[-1].tokens + offset, args["mask_token_id"])
    assert torch.equal(final, data[f"{name}.final_input_ids"])

    # The model's step-0 logits (cond then uncond rows), full and at the image positions we asked for.
    step0 = data[f"{name}.step0_model_logits"]
    call_ids, call_mask, positions, logits = model.calls[0]
    assert positions == image
    torch.testing.assert_close(logits, step0[:, image], atol=2e-4, rtol=0)
    real = call_mask.bool()  # padded query rows differ by design (official: a uniform attention row)
    torch.testing.assert_close(reference_model(call_ids, call_mask)[real], step0[real], atol=2e-4, rtol=0)
    for t, (*_, raw) in enumerate(model.calls):  # guided image logits of every step
        guided = guide(*raw.chunk(2), args["guidance_scale"]) if args["guidance_scale"] > 0 else raw
        torch.testing.assert_close(guided[..., vocab], data[f"{name}.image_logits_per_step"][t], atol=2e-4, rtol=0)
