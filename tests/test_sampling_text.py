"""Text block loop: contract properties on a mock denoiser, then parity with the official sampler.

The parity cases (fixture `mmada_a/expected_sampling.safetensors`) were written by the official
`mmu_generate`, `mmu_generate_fast` and generate.py `generate` on the tiny checkpoint A.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import MASK, MockDenoiser
from mmada.sampling import ClassifierFreeGuidance, TextSampling, iter_sample_text, sample_text
from mmada.sampling.common import (
    add_gumbel_noise,
    num_transfer_tokens,
    select_above_threshold,
    select_topk_per_row,
    uniform_window,
)


def prompts(batch: int = 2, length: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, MASK, (batch, length), generator=g)


TENSOR_ARGS = ("attention_mask", "stop_token_ids", "generator")


def settings(**kw) -> TextSampling:
    """The mock's settings: 12 tokens in blocks of 4, 6 steps, greedy, with `kw` replacing any."""
    return TextSampling(**(dict(gen_length=12, block_length=4, steps=6, temperature=0.0) | kw))


def run(model, prompt, **kw):
    inputs = {k: kw.pop(k) for k in TENSOR_ARGS if k in kw}
    return list(iter_sample_text(model, prompt, settings(**kw), mask_id=MASK, **inputs))


# ---- properties ---------------------------------------------------------------------------------


def test_fills_every_mask_and_keeps_the_prompt():
    prompt = prompts()
    out = sample_text(MockDenoiser(), prompt, settings(), mask_id=MASK)
    assert out.shape == (2, 18)
    assert torch.equal(out[:, :6], prompt)
    assert not (out == MASK).any()


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_commits_the_scheduled_number_per_step_block_by_block(remasking):
    steps = run(MockDenoiser(), prompts(), gen_length=10, block_length=5, steps=6, remasking=remasking,
                generator=torch.Generator().manual_seed(0))
    assert len(steps) == 6 and [s.block for s in steps] == [0, 0, 0, 1, 1, 1]
    for s in steps:
        assert s.committed.sum(dim=1).tolist() == [[2, 2, 1][s.step % 3]] * 2
        block = slice(6 + 5 * s.block, 11 + 5 * s.block)
        assert not s.committed[:, :block.start].any() and not s.committed[:, block.stop:].any()
        assert torch.equal(s.tokens[:, :6], steps[0].tokens[:, :6])
        if s.step % 3 == 2:  # the block is complete at its last step; later blocks untouched
            assert not (s.tokens[:, block] == MASK).any()
            assert (s.tokens[:, block.stop:] == MASK).all()


def test_logits_are_requested_for_the_current_block_only():
    model = MockDenoiser()
    run(model, prompts())
    assert [c[2] for c in model.calls] == [slice(6, 10)] * 2 + [slice(10, 14)] * 2 + [slice(14, 18)] * 2


def test_leftover_masks_compete_in_later_blocks():
    # A model that may propose [MASK] itself: the official loop then keeps the position masked and
    # lets it compete in later steps, also after its block; the logit window must cover it.
    model = MockDenoiser(predict_mask=True, seed=3)
    model.position[:, MASK] = 0.0
    model.position[2, MASK] = 50.0  # relative position 2 = first generated token of the prompt-length-2 row
    steps = run(model, prompts(1, 2), gen_length=4, block_length=2, steps=4)
    assert steps[0].tokens[0, 2] == MASK and steps[0].committed[0, 2]
    assert model.calls[2][2].start == 2  # block 1 starts at 4, the window reaches back to position 2


def test_iterator_and_function_agree_and_are_deterministic():
    kw = dict(temperature=1.0, remasking="random")
    final = run(MockDenoiser(), prompts(), generator=torch.Generator().manual_seed(5), **kw)[-1].tokens
    out = sample_text(MockDenoiser(), prompts(), settings(**kw), mask_id=MASK,
                      generator=torch.Generator().manual_seed(5))
    again = sample_text(MockDenoiser(), prompts(), settings(**kw), mask_id=MASK,
                        generator=torch.Generator().manual_seed(5))
    other = sample_text(MockDenoiser(), prompts(), settings(**kw), mask_id=MASK,
                        generator=torch.Generator().manual_seed(6))
    assert torch.equal(final, out) and torch.equal(out, again) and not torch.equal(out, other)


def test_global_generator_equals_a_seeded_generator():
    kw = dict(mask_id=MASK)
    config = settings(gen_length=8, block_length=4, steps=4, temperature=0.7, remasking="random")
    with torch.random.fork_rng():  # leave the global generator as other tests expect it
        torch.manual_seed(11)
        implicit = sample_text(MockDenoiser(), prompts(), config, **kw)
    explicit = sample_text(MockDenoiser(), prompts(), config, generator=torch.Generator().manual_seed(11), **kw)
    assert torch.equal(implicit, explicit)


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_ragged_left_padded_batch_equals_rows_alone(cfg_scale):
    rows = [prompts(1, 7, seed=2)[0], prompts(1, 4, seed=3)[0], prompts(1, 5, seed=4)[0]]
    batch = torch.full((3, 7), 0, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for i, row in enumerate(rows):
        batch[i, 7 - len(row):], mask[i, 7 - len(row):] = row, 1
    kw = dict(mask_id=MASK)
    config = settings(gen_length=8, block_length=4, steps=6, cfg_scale=cfg_scale)
    together = sample_text(MockDenoiser(), batch, config, attention_mask=mask, **kw)
    for i, row in enumerate(rows):
        alone = sample_text(MockDenoiser(), row[None], config, **kw)
        assert torch.equal(together[i, 7 - len(row):], alone[0])


def test_cfg_runs_cond_then_prompt_masked_uncond():
    model = MockDenoiser()
    prompt = prompts()
    run(model, prompt, cfg_scale=2.0)
    ids = model.calls[0][0]
    assert ids.shape == (4, 18)
    assert torch.equal(ids[:2, :6], prompt) and (ids[2:, :6] == MASK).all()
    assert torch.equal(ids[:2, 6:], ids[2:, 6:])


def test_guidance_spellings_agree():
    cond, uncond = torch.randn(3, 5), torch.randn(3, 5)
    wrapped = ClassifierFreeGuidance(lambda ids, m=None, *, positions=None: torch.cat([cond, uncond]),
                                     1.5, lambda ids, m: (ids, m))
    llada = uncond + (1.5 + 1) * (cond - uncond)
    torch.testing.assert_close(wrapped(torch.zeros(3, 1, dtype=torch.long)), llada)


def test_threshold_mode_commits_confident_tokens_in_parallel():
    exact = run(MockDenoiser(sharpness=4), prompts(), steps=12)
    fast = run(MockDenoiser(sharpness=4), prompts(), steps=12, threshold=0.5)
    assert len(fast) < len(exact)
    for s in fast:  # at least one commit per step; all but the best one reach the threshold
        assert (s.committed.sum(dim=1) >= 1).all()
        assert ((s.committed & (s.confidence < 0.5)).sum(dim=1) <= 1).all()
    assert not (fast[-1].tokens == MASK).any()


def test_stops_early_when_every_row_ends_a_block_with_a_stop_token():
    model = MockDenoiser()
    first = run(model, prompts(1), gen_length=12, block_length=4, steps=6)
    stop = int(first[1].tokens[0, 9])  # what the model writes at the end of block 0
    steps = run(MockDenoiser(), prompts(1), gen_length=12, block_length=4, steps=6, stop_token_ids={stop})
    assert len(steps) == 2 and (steps[-1].tokens[0, 10:] == MASK).all()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(gen_length=10, block_length=4), r"`gen_length` \(10\) must be divisible by `block_length` \(4\)"),
        (dict(steps=5), r"`steps` \(5\) must be divisible by the number of blocks"),
        (dict(steps=0), r"`steps` \(0\) must be >= 1"),
        (dict(temperature=-1.0), r"`temperature`"),
        (dict(remasking="lowest"), r"`remasking`"),
        (dict(cfg_scale=-0.5), r"`cfg_scale`"),
        (dict(threshold=1.5), r"`threshold`"),
        (dict(attention_mask=torch.ones(2, 5)), r"`attention_mask` must be"),
        (dict(attention_mask=torch.tensor([[1, 1, 0, 1, 1, 1]] * 2)), r"left-padded"),
    ],
)
def test_invalid_settings_are_refused_by_name(kw, message):
    # settings when the TextSampling is made; tensors when the iterator is made, before any step
    with pytest.raises(ValueError, match=message):
        run(MockDenoiser(), prompts(), **kw)


# ---- shared pieces ------------------------------------------------------------------------------


def test_num_transfer_tokens_spreads_the_remainder_first():
    mask = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    assert num_transfer_tokens(mask, 3).tolist() == [[2, 2, 1], [3, 3, 2]]


def test_select_topk_per_row_matches_a_loop_of_topk():
    scores = torch.randn(4, 9, generator=torch.Generator().manual_seed(0)).double()
    scores[1, 3:] = float("-inf")
    k = torch.tensor([0, 3, 9, 2])
    expected = torch.zeros(4, 9, dtype=torch.bool)
    for row in range(4):
        expected[row, scores[row].topk(int(k[row])).indices] = True
    assert torch.equal(select_topk_per_row(scores, k), expected)
    picked = select_above_threshold(torch.tensor([[0.2, 0.9, 0.95, float("-inf")], [0.1, 0.3, 0.2, 0.0]]), 0.9)
    assert picked.tolist() == [[False, True, True, False], [False, True, False, False]]


def test_uniform_window_consumes_the_generator_like_a_full_draw():
    full = torch.rand(2, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    part = uniform_window((2, 7, 5), slice(2, 5), dtype=torch.float64, device=torch.device("cpu"), generator=g)
    assert torch.equal(part, full[:, 2:5])
    after_full = torch.Generator().manual_seed(3)
    torch.rand(2, 7, 5, dtype=torch.float64, generator=after_full)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=after_full))
    logits = torch.randn(2, 3)
    assert add_gumbel_noise(logits, 0.0) is logits


# ---- parity with the official sampler -----------------------------------------------------------


def _sampling_cases(reference_dir):
    cases = json.loads((reference_dir / "mmada_a" / "cases.json").read_text())["cases"]
    return [c for c in cases if c["file"] == "expected_sampling.safetensors"]


SAMPLING_CASES = [
    "mmu_1block", "mmu_2blocks", "mmu_uneven", "mmu_cfg", "mmu_padmask", "mmu_temp1_seeded",
    "mmu_random_remask_seeded", "generate_py_2blocks", "generate_py_cfg", "mmu_image", "mmu_fast_eot",
]


class Recorder:
    """Wraps the model; records the ids and positions of every call."""

    def __init__(self, model) -> None:
        self.model, self.ids, self.positions = model, [], []

    def __call__(self, input_ids, attention_mask=None, *, positions=None):
        self.ids.append(input_ids.clone())
        self.positions.append(positions)
        return self.model(input_ids, attention_mask, positions=positions)


@pytest.fixture(scope="module")
def reference_model(reference_dir):
    mmada = pytest.importorskip("mmada")
    return mmada.load_model(reference_dir / "mmada_a")


@pytest.mark.parametrize("name", SAMPLING_CASES)
def test_official_sampling_parity(name, reference_dir, reference_model):
    case = {c["name"]: c for c in _sampling_cases(reference_dir)}[name]
    args, data = case["args"], load_file(reference_dir / "mmada_a" / "expected_sampling.safetensors")
    model = Recorder(reference_model)
    generator = torch.Generator().manual_seed(args["seed"]) if "seed" in args else None
    settings = TextSampling(
        gen_length=args.get("max_new_tokens", args.get("gen_length")), block_length=args["block_length"],
        steps=args["steps"], temperature=args["temperature"], remasking=args["remasking"],
        cfg_scale=args.get("cfg_scale", 0.0),
    )
    out = sample_text(model, data[f"{name}.prompt"], settings, mask_id=args["mask_id"],
                      attention_mask=data.get(f"{name}.attention_mask"), stop_token_ids=args.get("eot_token"),
                      generator=generator)
    assert torch.equal(out, data[f"{name}.output"])
    assert torch.equal(torch.stack(model.ids), data[f"{name}.trace_inputs"])
    assert all(isinstance(p, slice) for p in model.positions)  # never the full-sequence logits
