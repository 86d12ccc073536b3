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
