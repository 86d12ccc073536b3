"""An lm-evaluation-harness model: `mmada-lm-eval --model mmada --model_args pretrained=PATH_OR_ID,...`.

lm_eval 0.4.13 finds models only in its in-process registry (`lm_eval.api.registry`, no entry-point or
plugin discovery), so a plain `lm_eval --model mmada` cannot see this package. `mmada-lm-eval` (and
`python -m mmada.evaluation.lm_harness`) registers the model, then runs lm_eval's own command line
with the same arguments, so every lm_eval flag works:

    mmada-lm-eval --model mmada --model_args pretrained=mmada-tiny,preset=fast,gen_length=64 \\
        --tasks gsm8k --include_path my_tasks/ --output_path results/

From Python no registration is needed: pass an instance,
`lm_eval.simple_evaluate(model=MMaDALM(pretrained=...), tasks=[...], task_manager=TaskManager(include_path=...))`,
or call `register()` first to use `model="mmada"`.

Model args (all `key=value`): the adapter's own (`HarnessArgs`: pretrained, dtype, device, batch_size,
preset, mc_num, mc_batch_size, seed, check_greedy) and every `sampling.TextSampling` field (gen_length,
steps, block_length, temperature, remasking, cfg_scale, cache, threshold, ...), applied over the
checkpoint's defaults (`mmada_pipeline.json`) and the `preset`, converted and checked by the one config
loader (`utils.config.build`), so a bad value is refused in one line that names the key.

Request types:

* `generate_until`: the context is continued as raw text (`MMaDAPipeline.complete_batch`; with
  `--apply_chat_template` lm_eval first renders the conversation with `apply_chat_template` below, the
  checkpoint's chat template). Requests with the same generation kwargs are batched, longest first, and
  returned in their original order. The generation kwargs apply over the model args (`generation_plan`).
* `loglikelihood`: LLaDA's Monte-Carlo bound (`evaluation.likelihood`), `mc_num` samples, seeded per
  request from `seed` and the request's text, so a number never depends on batching or on the other
  requests; `is_greedy` decodes the masked continuation greedily.
* `loglikelihood_rolling`: the same bound over lm_eval's disjoint rolling windows of the text (each
  conditioned on bos and the window's context), summed: a lower bound of log p(text) in expectation.

Contexts are encoded with special-token strings parsed, as Hugging Face tokenizers (and so lm_eval's
`hf` model) do: a rendered chat template is made of them, and benchmark text does not contain them. A
context too long for the model loses its oldest tokens (bos kept), with a warning, as lm_eval's `hf`
model truncates.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import cache
from typing import Any, NamedTuple

import torch

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as err:
    raise ImportError(f"the lm-evaluation-harness adapter needs the eval extra: pip install 'mmada[eval]' ({err})"
                      ) from None
from tqdm import tqdm

from ..pipelines import MMaDAPipeline
from ..prompting.chat import LLADA_CHAT_TEMPLATE, apply_chat_template
from ..sampling import TextSampling
from ..sampling.common import model_max_length
from ..utils.config import build, to_dict
from ..utils.device import resolve_device, resolve_dtype
from ..utils.files import DEFAULT_MODEL
from .likelihood import continuation_loglikelihood, greedy_reproduces

logger = logging.getLogger(__name__)

MODEL_NAME = "mmada"
"""The name `--model` takes."""
_READ_GEN_KWARGS = frozenset({"until", "max_gen_toks", "do_sample", "temperature"})
"""The generation kwargs this sampler reads (after lm_eval's normalisation); others are ignored with a warning."""
__all__ = ["MODEL_NAME", "GenerationPlan", "HarnessArgs", "MMaDALM", "generation_plan", "main", "parse_model_args",
           "register", "with_device_default"]


@dataclass(frozen=True)
class HarnessArgs:
    """The adapter's own model args; every other key must be a `sampling.TextSampling` field."""

    pretrained: str = DEFAULT_MODEL
    """Checkpoint folder, hub id (`owner/name`) or built-in name."""
    dtype: str = "float32"
    """Compute dtype: float32, bf16 / bfloat16, fp16."""
    device: str | None = None
    """cuda, cuda:1, mps, cpu; None = the best available."""
    batch_size: int = 1
    """Contexts per sampler call in generate_until (each row is computed as if alone)."""
    preset: str | None = None
    """A text-sampling preset (`sampling.PRESETS`: exact, fast, fastest) over the checkpoint's defaults;
    the sampler keys apply over it."""
    mc_num: int = 128
    """Monte-Carlo samples per loglikelihood request (LLaDA's likelihood benchmarks use 128)."""
    mc_batch_size: int = 32
    """Samples per model call (memory only: the estimate does not change with it)."""
    seed: int = 1234
    """Seeds each likelihood request's masks (together with its text) and the generation noise."""
    check_greedy: bool = True
    """Compute loglikelihood's `is_greedy` (one model call per continuation token); False reports False,
    as LLaDA's `is_check_greedy=False` does."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "mc_num", "mc_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        resolve_dtype(self.dtype)  # an unknown name raises here, before the model loads
        resolve_device(self.device)


def parse_model_args(model_args: Mapping[str, Any]) -> tuple[HarnessArgs, dict[str, Any]]:
    """Split lm_eval's model args into the adapter's (typed and checked) and the sampler overrides.

    The sampler overrides are checked by name here and by value in `sampler_settings`, once the
    checkpoint's defaults they apply over are known.

    Raises:
        ValueError: one line naming the key.
    """
    own = [f.name for f in fields(HarnessArgs)]
    sampler = [f.name for f in fields(TextSampling)]
    unknown = [key for key in model_args if key not in own and key not in sampler]
    if unknown:
        raise ValueError(f"unknown {MODEL_NAME} model arg `model_args.{unknown[0]}`; valid: {', '.join(own)}, and "
                         f"the sampler settings {', '.join(sampler)}")
    args = build(HarnessArgs, {k: v for k, v in model_args.items() if k in own}, where="model_args")
    return args, {k: v for k, v in model_args.items() if k in sampler}


def sampler_settings(base: TextSampling, overrides: Mapping[str, Any]) -> TextSampling:
    """`base` with the sampler model args, converted and checked by the config loader (one line naming the key)."""
    return build(TextSampling, {**to_dict(base), **overrides}, where="model_args")


class GenerationPlan(NamedTuple):
    """What one group of generate_until requests runs."""

    settings: TextSampling
    max_gen_toks: int
    """The generated text is cut to this many tokens (the sampler generates whole blocks)."""
    until: list[str]
    """Stop strings: the text is cut at the first occurrence of any."""


def generation_plan(base: TextSampling, gen_kwargs: Mapping[str, Any]) -> GenerationPlan:
    """The sampler settings, token budget and stop strings of a request's generation kwargs.

    The request's kwargs apply over the model args (`base`), as lm_eval's own models treat them:

    * `max_gen_toks` (or an alias lm_eval accepts; absent: base.gen_length) becomes gen_length rounded
      up to whole blocks, the sampler's unit, with base's steps per block; the text is then cut to
      `max_gen_toks` tokens. Rounding up rather than refusing keeps every task runnable at any block length.
    * `do_sample=False` is greedy (temperature 0); otherwise a request's `temperature` wins over base's.
    * `until`: a string or a list; EOS needs none, decoding already stops at EOS / `<|eot_id|>`.

    Other keys (`top_p`, ...) mean nothing to this sampler and are ignored, with a warning.
    """
    normal = normalize_gen_kwargs(dict(gen_kwargs), base.gen_length)
    ignored = tuple(sorted(set(normal) - _READ_GEN_KWARGS))
    if ignored:
        _warn_ignored(ignored)
    max_gen_toks = int(normal["max_gen_toks"])
    if max_gen_toks < 1:
        raise ValueError(f"`max_gen_toks` must be >= 1, got {max_gen_toks}")
    temperature = 0.0 if gen_kwargs.get("do_sample") is False else float(gen_kwargs.get("temperature",
                                                                                         base.temperature))
    blocks = math.ceil(max_gen_toks / base.block_length)
    steps_per_block = base.steps // (base.gen_length // base.block_length)
    settings = replace(base, gen_length=blocks * base.block_length, steps=blocks * steps_per_block,
                       temperature=temperature)
    return GenerationPlan(settings, max_gen_toks, handle_stop_sequences(normal["until"], eos=None))


@cache
def _warn_ignored(keys: tuple[str, ...]) -> None:
    logger.warning("generation kwargs %s have no meaning for the MMaDA sampler and are ignored", ", ".join(keys))


def request_seed(seed: int, *texts: str) -> int:
    """A 63-bit seed from `seed` and a request's text: the same request gets the same masks in any run,
    whatever else is evaluated with it or how it is batched."""
    digest = hashlib.sha256("\0".join([str(seed), *texts]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class MMaDALM(LM):
    """The lm_eval model: `MMaDALM(pretrained=..., **model_args)`, or around a loaded pipeline."""

    def __init__(self, pipeline: MMaDAPipeline | None = None, **model_args: Any) -> None:
        """Load `pretrained` (or use `pipeline`; then pretrained, dtype and device must not be given)."""
        super().__init__()
        args, overrides = parse_model_args(model_args)
        if pipeline is None:
            pipeline = MMaDAPipeline.from_pretrained(args.pretrained, dtype=args.dtype, device=args.device)
        elif given := [key for key in ("pretrained", "dtype", "device") if key in model_args]:
            raise ValueError(f"{', '.join(given)} describe the model to load; a given pipeline is already loaded")
        self.args, self.pipe = args, pipeline
        self.sampling = sampler_settings(pipeline.text_settings(preset=args.preset), overrides)
        """Generation defaults (and the likelihood's guidance weight, `cfg_scale`, as LLaDA's one `cfg`)."""

    # ---- chat templates (lm_eval's --apply_chat_template) ----------------------------------------
    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation rendered with the checkpoint's chat template (`prompting.chat`)."""
        return apply_chat_template(self.pipe.tokenizer, chat_history, add_generation_prompt=add_generation_prompt)

    def chat_template(self, chat_template: bool | str = False) -> str:
        """The template text (recorded in lm_eval's results); a checkpoint has only one."""
        return self.pipe.tokenizer.chat_template or LLADA_CHAT_TEMPLATE

    @property
    def tokenizer_name(self) -> str:
        """Fingerprints lm_eval's cache of rendered requests: the template decides the rendering."""
        return f"{MODEL_NAME}-{hashlib.sha256(self.chat_template().encode('utf-8')).hexdigest()[:16]}"

    # ---- generate_until ---------------------------------------------------------------------------
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Continue each context (`Instance.args = (context, gen_kwargs)`) up to its stop strings."""
        collator = Collator([r.args for r in requests], sort_fn=lambda a: (-len(self._encode(a[0])), a[0]),
                            group_by="gen_kwargs", group_fn=lambda a: a[1])
        out: list[str] = []
        with tqdm(total=len(requests), disable=disable_tqdm, desc="mmada generate_until") as bar:
            for index, chunk in enumerate(collator.get_batched(n=self.args.batch_size)):
                contexts = [context for context, _ in chunk]
                texts = self._generate(contexts, chunk[0][1], index)
                for (context, gen_kwargs), text in zip(chunk, texts):
                    self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                out += texts
                bar.update(len(chunk))
        return collator.get_original(out)

    def _generate(self, contexts: list[str], gen_kwargs: Mapping[str, Any], index: int) -> list[str]:
        """One batch with the same generation kwargs; `index` (the batch's) seeds its sampling noise."""
        plan = generation_plan(self.sampling, gen_kwargs)
        generator = torch.Generator(self.pipe.device).manual_seed(self.args.seed * 100003 + index)
        results = self.pipe.complete_batch(contexts, parse_special=True, truncate=True, generator=generator,
                                           sampling=plan.settings)
        texts = [self.pipe.decode_answer(r.tokens[: plan.max_gen_toks]).text for r in results]
        return [postprocess_generated_text(text, plan.until, think_end_token=None) for text in texts]

    # ---- likelihoods ------------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context) estimate, is_greedy) for each `Instance.args = (context, continuation)`."""
        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="mmada loglikelihood"):
            context, continuation = request.args
            prefix, target = self._encode_pair(context, continuation)
            generator = torch.Generator().manual_seed(request_seed(self.args.seed, context, continuation))
            logp = self._score(prefix, target, generator)
            greedy = self.args.check_greedy and greedy_reproduces(
                self.pipe.model, prefix, target, mask_id=self.pipe.vocab.mask_id, cfg_scale=self.sampling.cfg_scale,
                device=self.pipe.device)
            self.cache_hook.add_partial("loglikelihood", (context, continuation), (logp, greedy))
            out.append((logp, greedy))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """log p(text) estimates for `Instance.args = (text,)`: the bound summed over disjoint rolling windows."""
        limit = self._max_length()
        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="mmada loglikelihood_rolling"):
            (text,) = request.args
            # Seeded as the pair ("", text): a text that fits one window scores as loglikelihood("", text).
            generator = torch.Generator().manual_seed(request_seed(self.args.seed, "", text))
            # A disjoint window holds max_seq_len + 1 tokens (context and prediction), and bos goes before it.
            windows = get_rolling_token_windows(self._encode(text), prefix_token=self.pipe.vocab.bos_id,
                                                max_seq_len=limit - 2, context_len=1)
            total = 0.0
            for context, target in map(make_disjoint_window, windows):
                total += self._score(self._with_bos(context), target, generator)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    def _score(self, prefix: list[int], target: list[int], generator: torch.Generator) -> float:
        return continuation_loglikelihood(
            self.pipe.model, prefix, target, mask_id=self.pipe.vocab.mask_id, num_samples=self.args.mc_num,
            batch_size=self.args.mc_batch_size, cfg_scale=self.sampling.cfg_scale, generator=generator,
            device=self.pipe.device)

    # ---- tokens -----------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.pipe.tokenizer.encode(text, parse_special=True)

    def _with_bos(self, ids: list[int]) -> list[int]:
        bos = self.pipe.vocab.bos_id
        return ids if ids[:1] == [bos] else [bos, *ids]

    def _max_length(self) -> int:
        limit = model_max_length(self.pipe.model)
        if limit is None:
            raise ValueError("the model does not declare its max_sequence_length")
        return limit

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(bos + context ids, continuation ids), split as lm_eval's `TemplateLM._encode_pair` splits them.

        Trailing spaces of the context move to the continuation, the whole text is encoded once and
        split after the context's own token count (byte-level BPE merges a word with its leading space).
        A pair too long for the model loses the oldest context tokens (bos kept), with a warning.
        """
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self._encode(context + continuation)
        split = len(self._encode(context))
        prefix, target = self._with_bos(whole[:split]), whole[split:]
        limit = self._max_length()
        if len(target) + 1 > limit:
            raise ValueError(f"a continuation of {len(target)} tokens does not fit the model's max_sequence_length "
                             f"({limit}) after bos")
        excess = len(prefix) + len(target) - limit
        if excess > 0:
            logger.warning("context cut by its first %d tokens to fit max_sequence_length %d", excess, limit)
            prefix = [prefix[0], *prefix[1 + excess :]]
        return prefix, target


def register() -> None:
    """Make `--model mmada` known to lm_eval in this process (0.4.13 has no plugin discovery)."""
    import lm_eval.models  # noqa: F401  # lm_eval's own names first: `get_model` loads them only into an empty registry

    register_model(MODEL_NAME)(MMaDALM)


def with_device_default(argv: list[str]) -> list[str]:
    """`argv` with `--device auto` (cuda > mps > cpu) added when it sets no device, neither by flag nor by a
    `--config` file: lm_eval's command line would otherwise pass its own default, cuda:0, which fails on a
    machine without CUDA (lm_eval's `hf` model quietly falls back instead)."""
    given = {arg.split("=", 1)[0] for arg in argv}
    return argv if given & {"--device", "--config", "-C"} else [*argv, "--device", "auto"]


def main() -> None:
    """`mmada-lm-eval`: lm_eval's command line (the same flags) with the `mmada` model registered."""
    from lm_eval.__main__ import cli_evaluate

    register()
    sys.argv[1:] = with_device_default(sys.argv[1:])
    cli_evaluate()


if __name__ == "__main__":
    main()
