"""UniGRPO rollouts and the update loop (MMaDA §2.3, Algorithm 1) on the built-in tiny pipeline."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mmada.pipelines import MMaDAPipeline
from mmada.rl.loop import PromptSource, RLConfig, RLSamplers, inner_noise, roll_out, run_unigrpo, unigrpo_update
from mmada.rl.objective import UniGRPOConfig
from mmada.rl.rollout import (
    Rollout,
    arithmetic_reward,
    gsm8k_reward,
    response_mask,
    rollout_t2i,
    rollout_text,
    rollout_vqa,
    vqa_reward,
    world_prompts,
)
from mmada.world import split_of

SMALL = {"gen_length": 8, "block_length": 8, "steps": 4, "temperature": 1.0}


@pytest.fixture(scope="module")
def shared() -> tuple[MMaDAPipeline, dict[str, torch.Tensor]]:
    pipe = MMaDAPipeline.from_pretrained("mmada-tiny")
    return pipe, copy.deepcopy(pipe.model.state_dict())


@pytest.fixture()
def pipe(shared: tuple[MMaDAPipeline, dict[str, torch.Tensor]]) -> Iterator[MMaDAPipeline]:
    """The tiny pipeline, its starting weights restored after each test (updates change them)."""
    model_pipe, initial = shared
    yield model_pipe
    model_pipe.model.load_state_dict(initial)
    model_pipe.model.eval()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _text_rollout(pipe: MMaDAPipeline, group_size: int = 3, seed: int = 0, **kwargs) -> Rollout:
    prompts = world_prompts("arithmetic", 2, random.Random(seed))
    return rollout_text(pipe, prompts.prompts, prompts.references, group_size=group_size,
                        settings=pipe.text_settings(**SMALL), generator=_gen(seed), **kwargs)


def _with_rewards(rollout: Rollout, rewards: list[float]) -> Rollout:
    values = torch.tensor(rewards)
    return dataclasses.replace(rollout, rewards=values, correct=(values > 0).float())


# ---- rollouts ------------------------------------------------------------------------------------------
def test_response_mask_by_hand():
    eos, eot = 5, 6
    generated = torch.tensor([[1, 2, eot, eos, eos], [1, 2, 3, 4, 1], [eos, 9, 9, 9, 9]])
    assert response_mask(generated, [eos, eot]).tolist() == [
        [True, True, True, False, False], [True] * 5, [True, False, False, False, False]]


def test_text_rollout_shapes_groups_response_and_rewards(pipe):
    calls: list[tuple[str, object]] = []

    def reward(text: str, reference: object) -> tuple[float, float]:
        calls.append((text, reference))
        return float(len(text)), float(len(text) % 2)

    prompts = world_prompts("arithmetic", 2, random.Random(0))
    r = rollout_text(pipe, prompts.prompts, prompts.references, group_size=3, settings=pipe.text_settings(**SMALL),
                     generator=_gen(), reward=reward)
    R, L = r.input_ids.shape
    P = L - SMALL["gen_length"]
    assert (R, r.group_size, r.num_groups) == (6, 3, 2) and r.response.shape == (R, L)
    assert r.prompts == [prompts.prompts[0]] * 3 + [prompts.prompts[1]] * 3
    for g in range(2):  # G consecutive rows share one prompt
        rows = r.input_ids[3 * g : 3 * g + 3, :P]
        assert (rows == rows[0]).all()
    assert not r.response[:, :P].any()  # the prompt is never the response
    stops = torch.tensor(pipe._stop_ids())
    for row, resp in zip(r.input_ids, r.response):
        gen = row[P:].tolist()
        first = next((i for i, t in enumerate(gen) if t in stops.tolist()), len(gen) - 1)
        assert resp[P:].tolist() == [i <= first for i in range(len(gen))]
    assert not (r.input_ids == pipe.vocab.mask_id).any()
    assert calls == list(zip(r.texts, [prompts.references[0]] * 3 + [prompts.references[1]] * 3))
    assert r.rewards.tolist() == [float(len(t)) for t in r.texts]
    assert r.correct is not None and r.correct.tolist() == [float(len(t) % 2) for t in r.texts]


def test_default_rewards_are_eq6():
    assert arithmetic_reward("<think> 5 + 3 = 8 </think> 8", 8) == (2.5, 1.0)
    assert arithmetic_reward("9", 8) == (0.0, 0.0)
    assert vqa_reward("Three.", "3") == (2.0, 1.0)


def test_vqa_rollout_uses_the_understanding_layout(pipe):
    prompts = world_prompts("vqa", 2, random.Random(1))
    assert prompts.images is not None and len(prompts.images) == 2
    r = rollout_vqa(pipe, prompts.images, prompts.prompts, prompts.references, group_size=2,
                    settings=pipe.text_settings(**SMALL), generator=_gen())
    assert r.task == "vqa" and r.input_ids.shape[0] == 4
    starts = r.input_ids[:, ~r.response.any(0)]
    assert (r.input_ids == pipe.vocab.mmu_id).sum(1).tolist() == [1] * 4
    assert starts.shape[1] > pipe.num_image_tokens  # image and question are prompt
    assert r.rewards.tolist() == [vqa_reward(t, a)[0] for t, a in zip(r.texts, [prompts.references[0]] * 2
                                                                        + [prompts.references[1]] * 2)]


def test_t2i_rollout_response_is_the_image_span(pipe):
    prompts = world_prompts("t2i", 2, random.Random(0))
    r = rollout_t2i(pipe, prompts.prompts, prompts.references, group_size=2,
                    settings=pipe.image_settings(timesteps=4), generator=_gen())
    n = pipe.num_image_tokens
    assert r.task == "t2i" and r.response.sum(1).tolist() == [n] * 4
    image = r.input_ids[r.response].view(4, n)
    assert pipe.vocab.is_image_token(image).all()
    soi = (r.input_ids == pipe.vocab.soi_id).int().argmax(1)
    assert (r.response.int().argmax(1) == soi + 1).all()
    assert set(r.rewards.tolist()) <= {0.0, 1.0} and r.attention_mask is not None


def test_world_prompts_come_from_the_training_split():
    prompts = world_prompts("arithmetic", 50, random.Random(0))
    assert {split_of(q) for q in prompts.prompts} == {"train"}  # the evaluation suite is validation-only
    assert all(isinstance(a, int) for a in prompts.references)
    assert world_prompts("t2i", 3, random.Random(5)) == world_prompts("t2i", 3, random.Random(5))


def test_bad_rollout_inputs_are_refused(pipe):
    greedy = pipe.text_settings(**(SMALL | {"temperature": 0.0}))
    with pytest.raises(ValueError, match="temperature"):
        rollout_text(pipe, ["1 + 1?"], [2], group_size=2, settings=greedy)
    with pytest.raises(ValueError, match="at least one prompt"):
        rollout_text(pipe, [], [], group_size=2, settings=pipe.text_settings(**SMALL))
    with pytest.raises(ValueError, match="group_size"):
        rollout_text(pipe, ["1 + 1?"], [2], group_size=1, settings=pipe.text_settings(**SMALL))
    with pytest.raises(ValueError, match="references"):
        rollout_text(pipe, ["1 + 1?"], [2, 3], group_size=2, settings=pipe.text_settings(**SMALL))
    with pytest.raises(ValueError, match="count"):
        world_prompts("arithmetic", 0, random.Random(0))
    with pytest.raises(ValueError, match="task"):
        world_prompts("gsm8k", 1, random.Random(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown RL task"):
        RLConfig(tasks={"chess": 1.0})
    with pytest.raises(ValueError, match="gen_lenght"):
        RLConfig(text={"gen_lenght": 8})  # sampler fields are checked when the config is made


# ---- the update ----------------------------------------------------------------------------------------
def test_inner_noise_masks_only_the_response():
    ids = torch.arange(24).view(2, 12)
    response = torch.zeros(2, 12, dtype=torch.bool)
    response[:, 5:10] = True
    partial = inner_noise(ids, response, UniGRPOConfig(group_size=2, inner_steps=3), mask_id=99, generator=_gen())
    assert len(partial) == 3 and all(not (b.is_masked & ~response).any() for b in partial)
    assert all(b.is_masked.any(1).all() for b in partial)
    full = inner_noise(ids, response, UniGRPOConfig(group_size=2, inner_steps=2, estimator="fully_masked"), mask_id=99)
    assert all((b.is_masked == response).all() for b in full)


def test_first_inner_step_has_ratio_one_and_zero_kl_and_weights_move(pipe):
    r = _with_rewards(_text_rollout(pipe), [2.0, 0.0, 0.0, 0.0, 2.5, 2.0])
    before = [p.detach().clone() for p in pipe.model.parameters()]
    optimizer = torch.optim.AdamW(pipe.model.parameters(), lr=1e-4)
    pipe.model.train()
    m = unigrpo_update(pipe.model, r, UniGRPOConfig(group_size=3, inner_steps=2, kl_reference="old"), optimizer,
                       mask_id=pipe.vocab.mask_id, generator=_gen())
    assert m["skipped"] == 0.0 and m["kept_fraction"] == 1.0
    assert m["ratio_mean_first"] == 1.0 and m["kl_first"] == 0.0 and m["clip_fraction_first"] == 0.0
    assert m["ratio_mean_last"] != 1.0  # the second step sees the updated weights
    assert m["reward"] == pytest.approx(6.5 / 6) and m["accuracy"] == 0.5
    assert any(not torch.equal(a, b) for a, b in zip(before, pipe.model.parameters()))


def test_kl_against_the_frozen_reference(pipe):
    r = _with_rewards(_text_rollout(pipe), [2.0, 0.0, 0.0, 0.0, 2.5, 2.0])
    reference = copy.deepcopy(pipe.model).requires_grad_(False)
    optimizer = torch.optim.AdamW(pipe.model.parameters(), lr=1e-3)
    config = UniGRPOConfig(group_size=3, inner_steps=2, kl_reference="ref")
    with pytest.raises(ValueError, match="reference"):
        unigrpo_update(pipe.model, r, config, optimizer, mask_id=pipe.vocab.mask_id)
    m = unigrpo_update(pipe.model, r, config, optimizer, mask_id=pipe.vocab.mask_id, reference=reference,
                       generator=_gen())
    assert m["kl_first"] == 0.0 and m["kl_last"] > 0.0  # the policy has left the reference


def test_t2i_rollout_trains_through_the_padded_layout(pipe):
    prompts = world_prompts("t2i", 1, random.Random(0))
    r = rollout_t2i(pipe, prompts.prompts, prompts.references, group_size=2,
                    settings=pipe.image_settings(timesteps=4), generator=_gen())
    r = _with_rewards(r, [1.0, 0.0])
    optimizer = torch.optim.AdamW(pipe.model.parameters(), lr=1e-4)
    m = unigrpo_update(pipe.model, r, UniGRPOConfig(group_size=2, inner_steps=1, kl_reference="old"), optimizer,
                       mask_id=pipe.vocab.mask_id, generator=_gen())
    assert m["ratio_mean_first"] == 1.0 and m["kl_first"] == 0.0 and m["grad_norm_first"] > 0


def test_no_update_when_every_group_is_dropped(pipe):
    r = _with_rewards(_text_rollout(pipe), [1.0, 1.0, 1.0, 0.0, 0.0, 0.0])  # no spread in either group
    before = [p.detach().clone() for p in pipe.model.parameters()]
    optimizer = torch.optim.AdamW(pipe.model.parameters(), lr=1e-3)
    m = unigrpo_update(pipe.model, r, UniGRPOConfig(group_size=3, kl_reference="old"), optimizer,
                       mask_id=pipe.vocab.mask_id)
    assert m["skipped"] == 1.0 and m["kept_fraction"] == 0.0 and "loss_first" not in m
    assert all(torch.equal(a, b) for a, b in zip(before, pipe.model.parameters()))
    assert not optimizer.state


def test_update_refuses_a_mismatched_group_size(pipe):
    r = _text_rollout(pipe)
    optimizer = torch.optim.AdamW(pipe.model.parameters(), lr=1e-4)
    with pytest.raises(ValueError, match="group_size"):
        unigrpo_update(pipe.model, r, UniGRPOConfig(group_size=2, kl_reference="old"), optimizer,
                       mask_id=pipe.vocab.mask_id)


# ---- learning ------------------------------------------------------------------------------------------
def test_a_toy_reward_rises(pipe):
    """Reward 1 for a response containing the digit 1: about a third at the start, near 1 after 12 steps."""

    def has_one(text: str, reference: object) -> tuple[float, float]:
        return float("1" in text), float("1" in text)

    settings = pipe.text_settings(**SMALL)
    config = UniGRPOConfig(group_size=4, inner_steps=2, kl_reference="old", beta=0.0)
    optimizer = torch.optim.AdamW(pipe.model.parameters(), lr=1e-3, weight_decay=0.0)
    rng, sample_gen, mask_gen = random.Random(0), _gen(0), _gen(1)
    rewards = []
    for _ in range(12):
        prompts = world_prompts("arithmetic", 3, rng)
        pipe.model.eval()
        r = rollout_text(pipe, prompts.prompts, prompts.references, group_size=4, settings=settings,
                         generator=sample_gen, reward=has_one)
        pipe.model.train()
        rewards.append(unigrpo_update(pipe.model, r, config, optimizer, mask_id=pipe.vocab.mask_id,
                                      generator=mask_gen)["reward"])
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.25 and last > 0.8, rewards


def test_run_unigrpo_logs_one_line_per_step(pipe, tmp_path):
    log = tmp_path / "rl" / "log.jsonl"
    config = RLConfig(prompts_per_step=2, steps=2, text=dict(SMALL), lr=1e-4,
                      unigrpo=UniGRPOConfig(group_size=4, inner_steps=2), log_path=str(log))
    rows = run_unigrpo(pipe, config)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines == rows and [row["step"] for row in rows] == [0, 1]
    assert all({"reward", "accuracy", "kept_fraction", "skipped", "seconds"} <= set(row) for row in rows)
    assert rows[0]["skipped"] == 0.0 and rows[0]["ratio_mean_first"] == 1.0  # seeded: step 0 has reward spread
    assert not pipe.model.training


# ---- GSM8K prompts from a local file (the paper's text RL data) ---------------------------------------
GSM8K_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"


def test_gsm8k_reward_reads_the_reference_answer():
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert gsm8k_reward("<think> 48 + 24 = 72 </think> \\boxed{72}", solution) == (2.5, 1.0)
    assert gsm8k_reward("It is 72.", solution) == (2.0, 1.0)
    assert gsm8k_reward("<think> hmm </think> 71", solution) == (0.5, 0.0)


def test_gsm8k_prompts_and_rollout_from_a_local_file(pipe):
    section = RLConfig(tasks={"gsm8k": 1.0}, files={"gsm8k": str(GSM8K_TRAIN)}, prompts_per_step=2)
    prompts = PromptSource(section, seed=0).draw(0)
    assert prompts.task == "gsm8k" and len(prompts.prompts) == 2
    assert all("####" in ref for ref in prompts.references)  # the references are GSM8K solutions
    assert PromptSource(section, seed=0).draw(0) == prompts  # seeded by (seed, step)
    rollout = roll_out(pipe, prompts, section, RLSamplers.of(pipe, replace(section, text=SMALL)), _gen())
    assert rollout.task == "gsm8k" and rollout.input_ids.shape[0] == 2 * section.unigrpo.group_size


def test_gsm8k_files_are_checked_up_front(tmp_path):
    with pytest.raises(ValueError, match="files.gsm8k"):
        RLConfig(tasks={"gsm8k": 1.0})
    with pytest.raises(ValueError, match="does not exist"):
        RLConfig(tasks={"gsm8k": 1.0}, files={"gsm8k": str(tmp_path / "missing.jsonl")})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1 + 1?", "answer": "#### 2"}\n{"question": "no answer"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        RLConfig(tasks={"gsm8k": 1.0}, files={"gsm8k": str(bad)})
    with pytest.raises(ValueError, match="only"):
        RLConfig(tasks={"arithmetic": 1.0}, files={"arithmetic": str(bad)})
