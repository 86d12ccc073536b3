"""Forward process and losses: the official training losses, masking statistics, weighting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import mmada
from mmada.diffusion.losses import diffusion_text_loss, image_token_loss
from mmada.diffusion.masking import MaskedBatch, mask_image, mask_text
from mmada.prompting import LayoutSpans, Span, TokenLayout
from mmada.training.objectives import MaskedDiffusionObjective, NoisedTask, ObjectiveConfig

M = 16  # max_seq_length of the fixture batch: the t2i text part is M + 1 long


@pytest.fixture(scope="module")
def model(reference_dir):
    return mmada.load_model(reference_dir / "mmada_a")


def _fixture_task(task, clean, noisy, prompt_len, p_mask, mask_id, *, attention=None, image_span=None):
    """A `NoisedTask` from the official batch, whose masking the harness chose by hand."""
    B, L = clean.shape
    prompt = torch.zeros(B, L, dtype=torch.bool)
    prompt[:, :prompt_len] = True
    empty = Span.fixed(L, L, B)
    image = Span.fixed(*image_span, B) if image_span else empty
    spans = LayoutSpans(text=empty, prompt=Span.fixed(0, prompt_len, B), answer=Span.fixed(prompt_len, L, B),
                        image=image)
    attention = torch.ones(B, L, dtype=torch.bool) if attention is None else attention
    layout = TokenLayout(task, clean, attention, prompt, spans)
    masked = MaskedBatch(noisy, noisy == mask_id, torch.full((B, 1), p_mask))
    return NoisedTask(task, layout, masked, noisy == mask_id)


@pytest.mark.parametrize("case", ["train_forward_process", "train_forward_process_lm_lengths"])
def test_official_losses(model, reference_dir, case):
    e = load_file(reference_dir / "mmada_a" / "expected_training.safetensors")
    ids, labels = e[f"{case}.input_ids"], e[f"{case}.labels"]
    mask_id, L = model.config.mask_token_id, ids.shape[1]
    # the clean targets: labels where the official code has them (masked positions), the inputs elsewhere
    clean = torch.where(labels == -100, ids, labels)
    t2i = _fixture_task("t2i", clean[:2], ids[:2], L - 17, 0.0, mask_id, attention=e[f"{case}.t2i_masks"].bool(),
                        image_span=(M + 2, M + 2 + 16))
    # the official t2i loss reads every labelled position from <|soi|> on: masked codes + <|soi|>/<|eoi|>
    positions = labels[:2] != -100
    positions[:, : M + 1] = False
    t2i = NoisedTask("t2i", t2i.layout, t2i.masked, positions)
    p_lm, p_mmu = float(e[f"{case}.p_mask_lm"][0, 0]), float(e[f"{case}.p_mask_mmu"][0, 0])
    lm_lengths = f"{case}.answer_lengths_lm" in e
    # with answer_lengths_lm the official lm row is normalised by 20: a 15-token prompt gives that length
    lm = _fixture_task("lm", clean[2:3], ids[2:3], L - 20 if lm_lengths else 0, p_lm, mask_id)
    answer = int(e[f"{case}.answer_lengths"][0, 0])
    mmu = _fixture_task("mmu", clean[3:], ids[3:], L - answer, p_mmu, mask_id)
    objective = MaskedDiffusionObjective(ObjectiveConfig(lm_normalize="answer_length" if lm_lengths else "tokens"))
    with torch.no_grad():
        out = objective.loss(model, [t2i, lm, mmu])
    for task, name in [("t2i", "loss_t2i"), ("lm", "loss_lm"), ("mmu", "loss_mmu")]:
        torch.testing.assert_close(out.per_task[task], e[f"{case}.{name}"][0], rtol=1e-5, atol=1e-5)
    expected_total = e[f"{case}.loss_t2i"][0] + 0.1 * e[f"{case}.loss_lm"][0] + e[f"{case}.loss_mmu"][0]
    torch.testing.assert_close(out.total, expected_total, rtol=1e-5, atol=1e-5)


def test_masking_rate_matches_t_in_expectation():
    gen = torch.Generator().manual_seed(0)
    ids = torch.zeros(4000, 64, dtype=torch.long)
    t = torch.rand(4000, generator=gen)
    batch = mask_text(ids, torch.ones_like(ids, dtype=torch.bool), mask_id=7, t=t, generator=gen)
    rate = batch.is_masked.float().mean(dim=1)
    expected = (1 - 1e-3) * t + 1e-3
    assert (rate - expected).abs().mean() < 0.06  # binomial noise of 64 draws
    assert abs(rate.mean() - expected.mean()) < 0.005
    assert bool((batch.noisy[batch.is_masked] == 7).all()) and bool((batch.noisy[~batch.is_masked] == 0).all())


def test_prompt_is_never_masked():
    gen = torch.Generator().manual_seed(1)
    ids = torch.arange(50).repeat(200, 1)
    maskable = torch.zeros_like(ids, dtype=torch.bool)
    maskable[:, 30:] = True
    batch = mask_text(ids, maskable, mask_id=99, generator=gen)
    assert not bool(batch.is_masked[:, :30].any()) and bool(batch.is_masked[:, 30:].any())


def test_image_masking_hides_the_scheduled_count():
    gen = torch.Generator().manual_seed(2)
    ids = torch.arange(20).repeat(64, 1)
    image = torch.zeros_like(ids, dtype=torch.bool)
    image[:, 2:18] = True
    u = torch.rand(64, generator=gen)
    batch = mask_image(ids, image, mask_id=99, u=u, generator=gen)
    expected = (16 * torch.cos(u * math.pi / 2)).round().clamp(min=1)
    assert torch.equal(batch.is_masked.sum(dim=1).float(), expected)
    assert not bool(batch.is_masked[~image].any())
    with pytest.raises(ValueError, match="same, non-zero number of image positions"):
        mask_image(ids, torch.zeros_like(image), mask_id=99)


def test_inverse_p_weighting_on_a_hand_made_case():
    # two rows; row 0 masks 2 tokens at p=0.5, row 1 masks 1 token at p=0.25 (LLaDA guideline formula)
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]))
    targets = torch.tensor([0, 1, 0])
    p = torch.tensor([0.5, 0.5, 0.25])
    rows = torch.tensor([0, 0, 1])
    ce = -torch.log(torch.tensor([0.5, 0.75, 0.9]))
    by_tokens = diffusion_text_loss(logits, targets, p, rows, batch_size=2, normalize="tokens", seq_len=4)
    torch.testing.assert_close(by_tokens, (ce[0] / 0.5 + ce[1] / 0.5 + ce[2] / 0.25) / 8)
    by_answer = diffusion_text_loss(logits, targets, p, rows, batch_size=2, normalize="answer_length",
                                    answer_lengths=torch.tensor([3, 2]))
    torch.testing.assert_close(by_answer, ((ce[0] + ce[1]) / 0.5 / 3 + ce[2] / 0.25 / 2) / 2)
    torch.testing.assert_close(image_token_loss(logits, targets), F.cross_entropy(logits, targets))


def _real_batch(reference_dir):
    from mmada.prompting import TextTokenizer, Vocab, build_lm_batch, build_mmu_batch, build_t2i_batch

    tok = TextTokenizer.from_pretrained(reference_dir / "mmada_a")
    vocab = Vocab.from_tokenizer(tok, vocab_size=512, codebook_size=128, reserved=None)
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 128, (2, 16), generator=gen)
    image_ids = vocab.image_ids(codes)
    t2i = build_t2i_batch(tok.encode_batch(["a red cube", "two blue balls"]), image_ids, image_ids, vocab=vocab,
                          max_text_len=M, cond_dropout_prob=0.1, generator=gen)
    lm = build_lm_batch(tok.encode_batch(["once upon a time"]), vocab=vocab, max_seq_len=t2i.seq_len)
    chat = ("<|start_header_id|>user<|end_header_id|>\nWhat is it?<eot_id>"
            "<|start_header_id|>assistant<|end_header_id|>\nA cube.")
    mmu = build_mmu_batch(image_ids[:1], tok.encode_batch([chat]), vocab=vocab, max_text_len=M)
    return {"t2i": t2i, "lm": lm, "mmu": mmu}


def test_objective_on_real_layouts_equals_the_full_head_computation(model, reference_dir):
    """Logits only at the loss positions give the same loss as projecting every position (the official way)."""
    batch = _real_batch(reference_dir)
    objective = MaskedDiffusionObjective()
    gen = torch.Generator().manual_seed(0)
    noised = [objective.noise(task, layout, 315, gen) for task, layout in batch.items()]
    out = objective.loss(model, noised)

    class FullHead(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, ids, mask, *, positions, padding):
            return self.inner(ids, mask, padding=padding)[positions]

    full = objective.loss(FullHead(model), noised)
    assert set(out.per_task) == {"t2i", "lm", "mmu"} and out.num_tokens > 0
    for task in out.per_task:
        torch.testing.assert_close(out.per_task[task], full.per_task[task], rtol=1e-5, atol=1e-5)
    out.total.backward()
    assert model.head.weight.grad is not None and torch.isfinite(model.head.weight.grad).all()
    model.zero_grad(set_to_none=True)


# ---- answer-loss options for models trained from scratch ---------------------------------------------------
class TableModel(torch.nn.Module):
    """Logits that depend only on the position: row-independent, so every loss can be computed by hand."""

    def __init__(self, logits):  # (L, V)
        super().__init__()
        self.table = logits
        self.config = type("C", (), {"mask_token_id": 9})()

    def forward(self, ids, mask, *, positions, padding):
        return self.table.expand(ids.shape[0], -1, -1)[positions]


def _answer_layout(task="mmu"):
    """Two rows of length 8: prompt [0, 3); answers '4 eos | pad pad pad' and '5 6 7 eos | pad'."""
    ids = torch.tensor([[1, 2, 3, 4, 0, 0, 0, 0], [1, 2, 3, 5, 6, 7, 0, 0]])
    prompt = torch.zeros(2, 8, dtype=torch.bool)
    prompt[:, :3] = True
    text = Span(torch.tensor([0, 0]), torch.tensor([5, 7]))  # bos through the first eos (id 0)
    spans = LayoutSpans(text=text, prompt=Span.fixed(0, 3, 2), answer=Span.fixed(3, 8, 2), image=Span.fixed(8, 8, 2))
    return TokenLayout(task, ids, torch.ones(2, 8, dtype=torch.bool), prompt, spans)


def _table():
    return torch.log_softmax(torch.arange(80, dtype=torch.float32).reshape(8, 10).sin() * 3, dim=-1)


def _ce(table, position, target):
    return -table[position, target]


def test_answer_padding_ignored_and_whole_short_answers_on_a_hand_made_case():
    table, layout = _table(), _answer_layout()
    cfg = ObjectiveConfig(answer_padding={"mmu": "ignore"}, whole_answer_max_tokens={"mmu": 4})
    objective = MaskedDiffusionObjective(cfg)
    noised = objective.noise("mmu", layout, 9, torch.Generator().manual_seed(0))
    # both answers (2 and 4 tokens without padding) are masked whole at p = 1 (the padding at the row's t) ...
    real = ~layout.prompt_mask & layout.spans.text.mask(8)
    assert bool(noised.masked.is_masked[real].all()) and not bool(noised.masked.is_masked[layout.prompt_mask].any())
    assert torch.equal(noised.masked.p_mask, torch.ones(2, 1))
    # ... but only the answer through its first eos is a target
    expected_positions = torch.zeros(2, 8, dtype=torch.bool)
    expected_positions[0, 3:5] = True
    expected_positions[1, 3:7] = True
    assert torch.equal(noised.loss_positions, expected_positions)
    loss = objective.loss(TableModel(table), [noised]).per_task["mmu"]
    row0 = (_ce(table, 3, 4) + _ce(table, 4, 0)) / 2
    row1 = (_ce(table, 3, 5) + _ce(table, 4, 6) + _ce(table, 5, 7) + _ce(table, 6, 0)) / 4
    torch.testing.assert_close(loss, (row0 + row1) / 2)


def test_official_answer_loss_trains_the_padding_and_divides_by_the_padded_length():
    table, layout = _table(), _answer_layout()
    objective = MaskedDiffusionObjective(ObjectiveConfig(whole_answer_max_tokens={"mmu": 4}))
    noised = objective.noise("mmu", layout, 9, torch.Generator().manual_seed(0))
    assert torch.equal(noised.loss_positions, noised.masked.is_masked)  # masked padding is a target too
    loss = objective.loss(TableModel(table), [noised]).per_task["mmu"]
    targets, pos = layout.input_ids, noised.loss_positions
    rows = [sum(_ce(table, j, targets[i, j]) for j in range(3, 8) if pos[i, j]) / 5 for i in range(2)]
    torch.testing.assert_close(loss, (rows[0] + rows[1]) / 2)


def test_answer_padding_as_target_divides_by_the_real_length():
    table, layout = _table(), _answer_layout()
    cfg = ObjectiveConfig(answer_padding={"mmu": "target"}, whole_answer_max_tokens={"mmu": 4})
    objective = MaskedDiffusionObjective(cfg)
    for seed in range(5):
        noised = objective.noise("mmu", layout, 9, torch.Generator().manual_seed(seed))
        pos = noised.loss_positions
        assert torch.equal(pos, noised.masked.is_masked)  # padding that is masked is learned
        loss = objective.loss(TableModel(table), [noised]).per_task["mmu"]
        rows = [sum(_ce(table, j, layout.input_ids[i, j]) for j in range(3, 8) if pos[i, j]) / n
                for i, n in ((0, 2), (1, 4))]  # real answer lengths: '4 eos' and '5 6 7 eos'
        torch.testing.assert_close(loss, (rows[0] + rows[1]) / 2)


def test_short_answers_are_always_hidden_while_their_padding_follows_t():
    layout = _answer_layout()
    objective = MaskedDiffusionObjective(ObjectiveConfig(whole_answer_max_tokens={"mmu": 4}))
    hidden = torch.stack([objective.noise("mmu", layout, 9, torch.Generator().manual_seed(s)).masked.is_masked
                          for s in range(200)]).float()  # (200, 2, 8)
    assert bool((hidden[:, 0, 3:5] == 1).all()) and bool((hidden[:, 1, 3:7] == 1).all())
    padding = hidden[:, 0, 5:8]
    assert 0.35 < float(padding.mean()) < 0.65 and float(padding.mean(1).std()) > 0.2  # rate t ~ U(0, 1) per row


def test_whole_answer_masking_only_for_short_answers():
    layout = _answer_layout()
    objective = MaskedDiffusionObjective(ObjectiveConfig(whole_answer_max_tokens={"mmu": 2}))
    p = torch.stack([objective.noise("mmu", layout, 9, torch.Generator().manual_seed(s)).masked.p_mask[:, 0]
                     for s in range(200)])  # (200, 2)
    assert bool((p[:, 0] == 1).all())  # 2 tokens: always whole, weight 1
    assert bool((p[:, 1] < 1).all()) and 0.4 < float(p[:, 1].mean()) < 0.6  # 4 tokens: LLaDA's t ~ U(0, 1)


def test_default_objective_noises_exactly_as_llada():
    """No option set: the same draws and positions as `mask_text` with the same generator (official path)."""
    layout = _answer_layout()
    noised = MaskedDiffusionObjective().noise("mmu", layout, 9, torch.Generator().manual_seed(3))
    reference = mask_text(layout.input_ids, ~layout.prompt_mask, mask_id=9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(noised.masked.noisy, reference.noisy) and torch.equal(noised.loss_positions, reference.is_masked)
    assert torch.equal(noised.masked.p_mask, reference.p_mask)


def test_tokens_normalisation_without_padding_divides_by_the_real_tokens():
    table, layout = _table(), _answer_layout("lm")
    for mode, divisor in (("train", 2 * 8), ("ignore", 2 + 4), ("target", 2 + 4)):
        cfg = ObjectiveConfig(lm_normalize="tokens", answer_padding={"lm": mode},
                              whole_answer_max_tokens={"lm": 8})
        objective = MaskedDiffusionObjective(cfg)
        noised = objective.noise("lm", layout, 9, torch.Generator().manual_seed(0))
        loss = objective.loss(TableModel(table), [noised]).per_task["lm"]
        pos = noised.loss_positions
        total = sum(_ce(table, j, layout.input_ids[i, j]) for i, j in pos.nonzero().tolist())
        torch.testing.assert_close(loss, total / divisor)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"answer_padding": {"t2i": "ignore"}}, "answer_padding.t2i`: not a text task"),
    ({"answer_padding": {"mmu": "drop"}}, "answer_padding.mmu` must be 'train', 'target' or 'ignore'"),
    ({"whole_answer_max_tokens": {"mmu": -1}}, "whole_answer_max_tokens.mmu` must be an integer >= 0"),
])
def test_bad_answer_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ObjectiveConfig(**kwargs)


def test_answer_options_from_yaml_overrides():
    from mmada.training.config import load_config

    cfg = load_config(["tiny_pretrain"], ["objective.answer_padding.mmu=ignore",
                                          "objective.whole_answer_max_tokens.lm_chat=3"])
    assert cfg.objective.ignores_padding("mmu") and not cfg.objective.ignores_padding("lm")
    assert cfg.objective.whole_answer_max_tokens["lm_chat"] == 3
    official = load_config(["stage1_3"]).objective
    assert official.answer_padding == {} and official.whole_answer_max_tokens == {}
