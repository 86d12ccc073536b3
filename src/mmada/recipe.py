"""The MMaDA recipe in miniature: train MMaDA-tiny on the tiny world, score it, and package it.

    world tokenizers (committed) -> tiny_pretrain -> tiny_sft (mixed long-CoT) -> tiny_unigrpo (RL) -> export
                                                  -> tiny_sft_nocot (ablation)                         + scores

Each stage is one of the shipped configs (`mmada/configs/train/tiny_*.yaml`) run by the one trainer,
so the recipe is only glue: it chains the run folders, evaluates each stage on the world's fixed suite
with the world's judges (`evaluation.world`), and writes the final (post-RL) model as a self-contained
checkpoint folder (weights in the release format, text tokenizer, `image_tokenizer/`,
`mmada_pipeline.json` with sampler defaults, a model card with the scores).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .evaluation.world import Results, WorldEvalConfig, compare_to_markdown, evaluate_world
from .pipelines import MMaDAPipeline, PipelineSettings
from .rl.trainer import RLTrainConfig, load_stage, rollout_settings, train_stage
from .sampling import ImageSampling, Overrides, TextSampling
from .training.config import resolve_asset
from .utils.device import seed_everything

logger = logging.getLogger(__name__)

STAGES = ("pretrain", "sft", "unigrpo", "sft_nocot")
STAGE_NAMES = {
    "pretrain": "after pretraining",
    "sft": "after mixed-CoT SFT",
    "sft_direct": "mixed-CoT SFT, asked without thinking",
    "sft_nocot": "SFT without CoT (ablation)",
    "unigrpo": "after UniGRPO",
    "unigrpo_direct": "UniGRPO, asked without thinking",
}
"""Columns of the scores table; `sft_direct` / `unigrpo_direct` are those models asked for short answers (no
thinking instruction; UniGRPO's only when it trained with thinking, else its own column is the direct one)."""
T2I_MAX_TEXT_LEN = 64
CONFIGS = {"pretrain": "tiny_pretrain", "sft": "tiny_sft", "sft_nocot": "tiny_sft_nocot", "unigrpo": "tiny_unigrpo"}
INIT_FROM = {"sft": "pretrain", "sft_nocot": "pretrain", "unigrpo": "sft"}
"""The stage each later stage starts from."""


@dataclass(frozen=True)
class RecipeConfig:
    """What the recipe trains and how long."""

    out_dir: str = "runs/mmada-tiny"
    """Folder for the stage runs (`pretrain/`, `sft/`, `sft_nocot/`), the exported model and the scores."""
    pretrain_steps: int | None = None
    """Optimizer steps of pretraining; None = the config's `schedule.max_steps`."""
    sft_steps: int | None = None
    """Optimizer steps of each SFT run; None = the config's."""
    rl: bool = True
    """Train the UniGRPO stage after the mixed-CoT SFT; the exported model is then the post-RL one."""
    rl_steps: int | None = None
    """RL steps of the UniGRPO stage; None = the config's."""
    ablation: bool = True
    """Also train the no-CoT SFT ablation (for the CoT-vs-no-CoT comparison)."""
    evaluate: bool = True
    """Score every stage on the world's evaluation suite."""
    eval_per_group: int = 50
    """Examples per group of the evaluation."""
    eval_limit: int | None = None
    """Cap per group (quick runs); None = all."""
    overrides: tuple[str, ...] = ()
    """`key=value` overrides applied to every stage."""
    rl_overrides: tuple[str, ...] = ()
    """Overrides of the UniGRPO stage only (`rl.*`, `pipeline.*`); `data.*` overrides skip that stage (it has
    no data section: its prompts come from the world)."""
    pretrain_overrides: tuple[str, ...] = ()
    """Overrides of the pretraining stage only (e.g. `model.overrides.*`: the SFT stages inherit the model)."""
    export_dtype: str = "bfloat16"
    """Storage dtype of the exported weights (the released MMaDA checkpoints are bf16; half the size). Every
    stage is scored from its exported weights, so the scores are those of what ships."""
    threads: int | None = None
    """torch threads (None = torch's default, all cores)."""
    seed: int = 0
    progress: bool = False


@dataclass(frozen=True)
class RecipeResult:
    model_dir: Path
    """The exported MMaDA-tiny checkpoint folder."""
    scores: dict[str, Results] = field(default_factory=dict)
    """stage -> task -> group -> accuracy."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall-clock time of each stage's training and of the whole recipe."""


def _stage_config(stage: str, recipe: RecipeConfig) -> Any:
    out = Path(recipe.out_dir)
    overrides = [f"log.run_dir={out / stage}", f"seed={recipe.seed}", f"log.progress={recipe.progress}"]
    if stage in INIT_FROM:
        overrides.append(f"model.init={out / INIT_FROM[stage]}")
    steps = {"pretrain": recipe.pretrain_steps, "unigrpo": recipe.rl_steps}.get(stage, recipe.sft_steps)
    if steps is not None:
        overrides.append(f"schedule.max_steps={steps}")
    common = list(recipe.overrides)
    extra = {"pretrain": recipe.pretrain_overrides, "unigrpo": recipe.rl_overrides}.get(stage, ())
    if stage == "unigrpo":
        common = [item for item in common if not item.startswith("data.")]
    return load_stage([CONFIGS[stage]], [*overrides, *common, *extra])


def pipeline_settings(config: Any) -> PipelineSettings:
    """Sampler defaults for the exported model, from the SFT data layout (answers fit `gen_length`); a
    UniGRPO stage keeps the settings it rolled out with."""
    if isinstance(config, RLTrainConfig):
        return rollout_settings(config)
    data = config.data
    cot = getattr(data, "cot", False)  # world_sft with CoT traces
    gen = 128 if cot else 32  # reasoning traces need room; short answers do not
    # t2i caption budget: captions are left-padded and padding is hidden (objective.padding: hide), so any
    # budget >= the caption gives the same image; world captions are <= 10 tokens, 64 keeps prompts short
    return PipelineSettings(
        max_text_len=min(data.max_text_len, T2I_MAX_TEXT_LEN),
        resolution=data.resolution,
        text=TextSampling(gen_length=gen, steps=gen // 2, block_length=32, temperature=0.0),
        image=ImageSampling(timesteps=12, guidance_scale=2.0),
    )


def export_model(
    run_dir: Path, config: Any, out: Path, scores: dict[str, Results], seconds: dict[str, float], *,
    dtype: str = "bfloat16", checkpoint: Path | None = None,
) -> Path:
    """Copy the run's latest release checkpoint (or `checkpoint`, one of its `step-*` folders; weights stored
    as `dtype`) plus tokenizers, sampler defaults and a model card to `out`."""
    from .checkpoint.hf import load_model, save_model
    from .checkpoint.train_state import find_latest

    latest = checkpoint or find_latest(run_dir)
    if latest is None:
        raise ValueError(f"{run_dir} holds no checkpoint to export")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(latest / "model", out)
    if dtype != "float32":  # training keeps float32 weights; the release stores them like the 8B models
        save_model(load_model(out), out, dtype=dtype)
    image_tokenizer = config.model.image_tokenizer
    if image_tokenizer:
        shutil.copytree(resolve_asset(image_tokenizer), out / "image_tokenizer")
    settings = pipeline_settings(config)
    (out / "mmada_pipeline.json").write_text(json.dumps(settings.to_dict(), indent=2) + "\n", encoding="utf-8")
    architecture = json.loads((out / "config.json").read_text(encoding="utf-8"))
    (out / "README.md").write_text(model_card(config, scores, seconds, architecture), encoding="utf-8")
    return out


CARD_ARCHITECTURE_KEYS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "mlp_hidden_size", "max_sequence_length",
                          "llm_vocab_size", "codebook_size", "vocab_size", "num_vq_tokens", "rope_theta", "torch_dtype")
"""The config.json keys the model card shows: the architecture of the weights that ship."""


def model_card(config: Any, scores: dict[str, Results], seconds: dict[str, float],
               architecture: dict[str, Any] | None = None) -> str:
    """A short model card: what the model is, how it was made, how it scores.

    `architecture` is the shipped config.json (its `CARD_ARCHITECTURE_KEYS` are shown). The card names no
    path of the machine it was built on: a stage's `model.init` appears as its folder's name only.
    """
    arch = {k: architecture[k] for k in CARD_ARCHITECTURE_KEYS if k in architecture} if architecture else {}
    init = asdict(config.model).get("init")
    origin = f"initialised from the recipe's `{Path(str(init)).name}` stage" if init else "trained from scratch"
    lines = [
        "# MMaDA-tiny",
        "",
        "A tiny multimodal diffusion language model trained by `mmada recipe tiny` on the tiny world",
        "(procedural shapes scenes, real handwritten digits, arithmetic word problems) with the MMaDA recipe:",
        "unified masked-token pretraining, then mixed long-CoT SFT"
        + (", then UniGRPO reinforcement learning." if isinstance(config, RLTrainConfig) else ".")
        + " It is the package's built-in default model.",
        "",
        f"Training time on this machine: {json.dumps({k: round(v) for k, v in seconds.items()})} seconds.",
        "",
        f"Architecture (from its config.json; {origin}):",
        "",
        "```json",
        json.dumps(arch, indent=1) if arch else "(config.json not available)",
        "```",
        "",
        "## Scores on the world's evaluation suite (`mmada eval world`)",
        "",
        scores_table(scores) if scores else "(not evaluated)",
    ]
    return "\n".join(lines) + "\n"


def scores_table(scores: dict[str, Results]) -> str:
    """The stage table of docs/results.md: task | group | one column per stage."""
    return compare_to_markdown({STAGE_NAMES.get(stage, stage): results for stage, results in scores.items()})


def stage_eval_config(per_group: int, limit: int | None, thinking: bool, seed: int = 0) -> WorldEvalConfig:
    """How the recipe scores a stage (and the benchmarks score checkpoints): greedy decoding, the model's own
    sampler defaults for reasoning, 32 tokens in one block for short answers."""
    short = Overrides(TextSampling, temperature=0.0, gen_length=32, steps=16, block_length=32)
    return WorldEvalConfig(per_group=per_group, limit=limit, thinking=thinking,
                           text=Overrides(TextSampling, temperature=0.0), short=short, seed=seed)


def evaluate_stage(model_dir: Path, recipe: RecipeConfig, thinking: bool) -> Results:
    """Score an exported stage with its own sampler defaults (greedy decoding)."""
    pipe = MMaDAPipeline.from_pretrained(model_dir)
    config = stage_eval_config(recipe.eval_per_group, recipe.eval_limit, thinking, recipe.seed)
    return evaluate_world(pipe, config, progress=recipe.progress)


def run_tiny_recipe(recipe: RecipeConfig, stages: Sequence[str] = STAGES) -> RecipeResult:
    """Train every stage in order, evaluate each, export the SFT model. Returns where it is and its scores."""
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    out = Path(recipe.out_dir)
    scores: dict[str, Results] = {}
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    todo = [s for s in stages if (s != "sft_nocot" or recipe.ablation) and (s != "unigrpo" or recipe.rl)]
    configs = {stage: _stage_config(stage, recipe) for stage in todo}
    for stage in todo:
        seed_everything(recipe.seed)
        t0 = time.perf_counter()
        logger.info("recipe: training %s", stage)
        result = train_stage(configs[stage])
        seconds[stage] = time.perf_counter() - t0
        if result.stopped_by is not None:
            raise RuntimeError(f"stage {stage} was stopped by {result.stopped_by}; rerun to resume it")
        exported = export_model(out / stage, configs[stage], out / "models" / stage, {}, seconds,
                                dtype=recipe.export_dtype)
        if recipe.evaluate:
            t0 = time.perf_counter()
            thinking = stage == "sft" or (isinstance(configs[stage], RLTrainConfig) and configs[stage].rl.thinking)
            scores[stage] = evaluate_stage(exported, recipe, thinking=thinking)
            if thinking:  # the same model asked for short answers: what thinking itself adds
                scores[f"{stage}_direct"] = evaluate_stage(exported, recipe, thinking=False)
            seconds[f"{stage} eval"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - start
    final_stage = next((s for s in ("unigrpo", "sft") if s in todo), todo[-1])
    final = export_model(out / final_stage, configs[final_stage], out / "mmada-tiny", scores, seconds,
                         dtype=recipe.export_dtype)
    (out / "scores.json").write_text(json.dumps({"scores": scores, "seconds": seconds}, indent=2), encoding="utf-8")
    if scores:
        (out / "results.md").write_text(scores_table(scores), encoding="utf-8")
    return RecipeResult(final, scores, seconds)
