"""The world's text tokenizer: a small byte-level BPE saved in the LLaDA / MMaDA-8B file format.

The tiny model must use exactly the sequence layouts of the 8B one, so this tokenizer copies the
LLaDA conventions that the reference fixture tokenizer records
(/work/shared/fixtures/mmada_reference/tokenizer, saved by `PreTrainedTokenizerFast.save_pretrained`):

    [0, 256)                     the byte alphabet (byte-level BPE never meets an unknown character)
    [256, V - 19)                learned merges, most frequent first
    [V - 19, V)                  19 added special tokens, in `SPECIAL_TOKENS` order:
                                 <|startoftext|> (bos), <|endoftext|> (eos = pad),
                                 <|reserved_token_0|> ... <|reserved_token_12|> (slots 2-12 carry
                                 MMaDA's task tokens <|soi|> ... <|r2i|>), <|mdm_mask|>,
                                 <|start_header_id|>, <|end_header_id|>, <|eot_id|>

No normaliser, no prefix space, no post-processor (bos is added by the layout builders, as in LLaDA),
and the Jinja chat template LLaDA ships. `<think>` / `</think>` stay ordinary text, as in LLaDA.

The BPE is trained on a fixed corpus drawn from the world's seeded *train* iterators: captions, VQA
and arithmetic questions with plain and chain-of-thought answers, digit prompts, each also rendered
through the chat template (with and without MMaDA's thinking instruction). HF `tokenizers` breaks
count ties by pair order, so the same corpus gives a byte-identical `tokenizer.json`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import re
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from mmada.prompting.chat import LLADA_CHAT_TEMPLATE, render_chat
from mmada.prompting.tokenizer import SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from mmada.prompting.vocab import END_HEADER_TOKEN, EOT_ID_TOKEN, MASK_TOKEN, START_HEADER_TOKEN
from mmada.world.data import digit_examples, iter_t2i, iter_text, iter_vqa

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
NUM_RESERVED = 13
"""LLaDA reserves `<|reserved_token_0|>` ... `<|reserved_token_12|>` right after eos; MMaDA uses 2-12."""
SPECIAL_TOKENS: tuple[str, ...] = (
    BOS_TOKEN,
    EOS_TOKEN,
    *(f"<|reserved_token_{k}|>" for k in range(NUM_RESERVED)),
    MASK_TOKEN,
    START_HEADER_TOKEN,
    END_HEADER_TOKEN,
    EOT_ID_TOKEN,
)
"""Added tokens in id order, as in the LLaDA tokenizer (and the reference fixture: ids 300-318)."""

DEFAULT_VOCAB_SIZE = 768
"""Total tokens incl. the 19 specials; see docs/results.md for the tokens-per-sequence trade-off."""
DEFAULT_EXAMPLES_PER_TASK = 3000
"""Corpus size per task (captions, VQA, arithmetic); more barely changes the merges."""
_MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
_SPECIAL_SPLIT = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))


def _chat(user: str, answer: str, *, thinking: bool) -> str:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return render_chat(messages, bos_token=BOS_TOKEN, thinking=thinking, add_generation_prompt=False)


def world_text_corpus(seed: int = 0, examples_per_task: int = DEFAULT_EXAMPLES_PER_TASK) -> list[str]:
    """The fixed BPE training corpus: texts of the world's *train* split, deterministic in `seed`.

    Each question-answer example contributes its raw texts and one chat rendering whose answer is
    the chain of thought (with the thinking instruction) or the short answer, chosen by a seeded coin.

    Returns:
        Texts that may contain special-token strings (from the chat template); the trainer splits
        them out, as the tokenizer does at encode time.
    """
    if examples_per_task < 1:
        raise ValueError(f"`examples_per_task` must be >= 1, got {examples_per_task}")
    coin = random.Random(f"world-text-tokenizer:{seed}")
    texts = [e.caption for e in itertools.islice(iter_t2i("train", seed), examples_per_task)]
    qa = [(e.question, e.answer, e.cot_answer) for e in itertools.islice(iter_vqa("train", seed), examples_per_task)]
    qa += [(e.question, e.answer, e.cot_answer) for e in itertools.islice(iter_text("train", seed), examples_per_task)]
    # One example per digit: the ~1450 real digits share ten texts, repeating them would skew the merges.
    one_per_digit = list({e.label: e for e in digit_examples("train")}.values())
    qa += [(e.question, e.answer, e.cot_answer) for e in one_per_digit]
    texts += [e.caption for e in one_per_digit]
    for question, answer, cot_answer in qa:
        thinking = coin.random() < 0.5
        texts += [question, cot_answer, _chat(question, cot_answer if thinking else answer, thinking=thinking)]
    return texts


def _pieces(texts: list[str]) -> list[str]:
    """Texts with special-token strings cut out: what the BPE model sees between added tokens."""
    return [piece for text in texts for piece in _SPECIAL_SPLIT.split(text) if piece]


def build_text_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE on `texts` and append `SPECIAL_TOKENS` after the learned vocabulary.

    Args:
        texts: training texts (special-token strings in them are cut out first).
        vocab_size: total size including the 19 specials; the BPE learns `vocab_size - 19 - 256` merges.
    """
    if vocab_size < _MIN_VOCAB_SIZE:
        raise ValueError(f"`vocab_size` must be >= {_MIN_VOCAB_SIZE} (256 bytes + 19 specials), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    # LLaDA's settings (fixture tokenizer.json): no prefix space, GPT-2 regex split, byte-level decoder.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_pieces(texts), trainer=trainer)
    learned = tokenizer.get_vocab_size()
    if learned != vocab_size - len(SPECIAL_TOKENS):
        # The corpus ran out of pairs to merge; ids stay valid but the size is not what was asked.
        logger.warning("BPE learned %d tokens, fewer than the %d asked", learned, vocab_size - len(SPECIAL_TOKENS))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer


def _added_token_json(token: str) -> dict[str, object]:
    return {"content": token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}  # fmt: skip


def tokenizer_config(tokenizer: Tokenizer) -> dict[str, object]:
    """`tokenizer_config.json` as transformers' `save_pretrained` writes it for LLaDA (keys sorted)."""
    decoder = {str(tokenizer.token_to_id(t)): _added_token_json(t) for t in SPECIAL_TOKENS}
    return {
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in (BOS_TOKEN, EOS_TOKEN, MASK_TOKEN)],
        "bos_token": BOS_TOKEN,
        "chat_template": LLADA_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "mask_token": MASK_TOKEN,
        # transformers' VERY_LARGE_INTEGER, what LLaDA's config holds (no length limit).
        "model_max_length": int(1e30),
        "pad_token": EOS_TOKEN,
        "padding_side": "left",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def special_tokens_map() -> dict[str, object]:
    """`special_tokens_map.json` of the LLaDA layout."""
    return {
        "additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in (BOS_TOKEN, EOS_TOKEN, MASK_TOKEN)],
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "mask_token": MASK_TOKEN,
        "pad_token": EOS_TOKEN,
    }


def save_text_tokenizer(tokenizer: Tokenizer, out_dir: str | os.PathLike[str]) -> Path:
    """Write `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / TOKENIZER_FILE))
    for name, content in ((TOKENIZER_CONFIG_FILE, tokenizer_config(tokenizer)),
                          (SPECIAL_TOKENS_MAP_FILE, special_tokens_map())):  # fmt: skip
        (out / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def train_text_tokenizer(
    out_dir: str | os.PathLike[str],
    *,
    vocab_size: int | None = None,
    seed: int = 0,
    examples_per_task: int = DEFAULT_EXAMPLES_PER_TASK,
) -> Path:
    """Train the world's byte-level BPE and save it in the LLaDA format; ~1 s on 2 cores.

    Args:
        out_dir: folder to write (created if needed); load it with `mmada.prompting.TextTokenizer`.
        vocab_size: total tokens including the 19 specials (the image offset of the tiny model);
            None means `DEFAULT_VOCAB_SIZE`.
        seed: selects the training corpus; the same seed writes byte-identical files.
        examples_per_task: corpus size per task (see `world_text_corpus`).

    Returns:
        `out_dir` as a Path.
    """
    vocab_size = DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size
    tokenizer = build_text_tokenizer(world_text_corpus(seed, examples_per_task), vocab_size)
    return save_text_tokenizer(tokenizer, out_dir)
