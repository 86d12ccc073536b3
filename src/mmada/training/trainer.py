"""The one training loop: micro-batches -> objective -> accumulated gradients -> clipped AdamW step.

MMaDA's five official training scripts (983-1333 lines each) become this loop plus one YAML file per
stage: the stages differ only in data, batch sizes, coefficients and learning rate (STYLE §5.13).
One optimizer step (`Trainer.train_step`):

    for each of `grad_accum` micro-batches (task -> TokenLayout) from the data source:
        out = objective(model, batch, generator)    # bf16 autocast where the device supports it
        (out.total / grad_accum).backward()         # gradients of the mean, as accelerate computes them
    clip the global gradient norm; AdamW step; scheduler step; average the logged numbers over processes

SIGTERM / SIGINT finish the current step, write a checkpoint and return; a second signal acts as usual.
A run that diverges stops with `NonFiniteLossError` after `optim.nonfinite_patience` consecutive steps with
a non-finite loss or gradient norm, and weights that became non-finite are never checkpointed (the last good checkpoint
stays the latest). The main process holds the run folder's lock (`training.run_lock`) for the whole run,
so a second run on the same folder is refused.
`fit(resume=True)` restores weights, AdamW, scheduler, every RNG and the data cursor, so a stopped run
continues exactly (bit for bit on CPU) as if it had not stopped. Everything distributed goes through
`training.distributed` (the only module importing torch.distributed), imported when training starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import train_state
from ..model import MMaDAModel
from ..prompting import TokenLayout
from ..utils.device import default_device
from .config import TrainConfig, build_model, load_tokenizers
from .data import BatchSource, build_source
from .hooks import EvalHook, PipelineHooks, PreviewHook
from .metrics import MetricsSink, check_sinks, open_sinks
from .objectives import MaskedDiffusionObjective, Objective
from .optim import build_optimizer, build_scheduler
from .run_lock import RunLock, acquire_on_main
from .tasks import TRAINING_TASKS

logger = logging.getLogger(__name__)



TrainerFactory = Callable[..., "Trainer"]
"""(wrapped model, config, *, ctx, tokenizers, evaluate, preview) -> a `Trainer` (e.g. `rl.UniGRPOTrainer`)."""


class NonFiniteLossError(ValueError):
    """Training diverged (NaN/inf loss or weights). A `ValueError`: the fix is a setting (learning rate,
    clipping, data), and the CLI reports it in one line with a non-zero exit code."""


@dataclass(frozen=True)
class TrainResult:
    step: int
    """Optimizer steps completed."""
    stopped_by: int | None = None
    """The signal that stopped the run before its end (signal.SIGTERM / SIGINT), else None."""
    checkpoint: Path | None = None
    """The last checkpoint written."""

    @property
    def exit_code(self) -> int:
        """0 when finished or stopped by SIGTERM (a clean, resumable stop); 130 = 128 + SIGINT for SIGINT."""
        return 128 + signal.SIGINT if self.stopped_by == signal.SIGINT else 0


class Trainer:
    """Owns the optimizer, the scheduler, the masking generator and the step counter of one run."""

    def __init__(self, model: MMaDAModel, objective: Objective | None, source: Any, config: TrainConfig, *,
                 ctx: Any = None, evaluate: EvalHook | None = None, preview: PreviewHook | None = None,
                 sinks: Sequence[MetricsSink] | None = None, assets: tuple[Path, ...] = ()) -> None:
        self.model, self.objective, self.source, self.config = model, objective, source, config
        self.dist = _distributed()
        self.ctx = ctx or self.dist.DistributedContext(rank=0, world_size=1, local_rank=0, backend=None,
                                                       device=next(model.parameters()).device)
        self.evaluate, self.preview, self.sinks, self.assets = evaluate, preview, sinks, assets
        self.run_dir = Path(config.log.run_dir)
        self.optimizer = build_optimizer(model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.schedule)
        self.generator = torch.Generator(self.ctx.device).manual_seed(config.seed + self.ctx.rank)
        self.generators: dict[str, torch.Generator] = {"masking": self.generator}
        """Every generator a checkpoint saves and a resume restores (subclasses add theirs)."""
        self.bf16 = _use_bf16(self.ctx.device, config.model.mixed_precision)
        self.step, self._saved_step = 0, -1
        self._signal: int | None = None
        self._nonfinite = 0  # consecutive steps with a non-finite loss or gradient norm

    def train_step(self, batches: Iterator[Mapping[str, TokenLayout]]) -> dict[str, float]:
        """One optimizer step over `batch.grad_accum` micro-batches; returns its metrics (process means)."""
        tasks: list[str] = list(TRAINING_TASKS)
        accum, device = self.config.batch.grad_accum, self.ctx.device
        n = len(tasks)
        self.model.train()
        start = time.perf_counter()
        # [mean total, per-task loss sums (n), per-task micro-batch counts (n), input tokens]: one all-reduce
        stats = torch.zeros(2 + 2 * n, device=device)
        assert self.objective is not None, "a supervised step needs an objective"
        for micro in range(accum):
            batch = next(batches)
            # replicated weights: reduce the gradients once, after the last micro-batch (DDP's no_sync); sharded
            # ones reduce every micro-batch, since holding unsharded gradients would cost a full fp32 copy
            self.dist.set_gradient_sync(self.model, micro == accum - 1 or self.config.model.fsdp)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = self.objective(self.model, batch, self.generator)
            (out.total / accum).backward()
            stats[0] += out.total.detach().float() / accum
            for task, loss in out.per_task.items():
                stats[1 + tasks.index(task)] += loss.detach().float()
                stats[1 + n + tasks.index(task)] += 1
            stats[-1] += sum(layout.input_ids.numel() for layout in batch.values())
        lr = self.optimizer.param_groups[0]["lr"]  # the rate of this update (the scheduler moves it after)
        grad_norm = float(self.dist.clip_grad_norm(self.model, self.config.optim.max_grad_norm or math.inf))
        if math.isfinite(grad_norm):
            self.optimizer.step()
        else:  # an overflow or a bad batch must not poison the weights: skip this update, keep going
            logger.warning("step %d: non-finite gradient norm, update skipped", self.step + 1)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        sums: list[float] = self.dist.all_reduce_mean(stats, self.ctx).tolist()
        elapsed = time.perf_counter() - start
        metrics = {"loss": sums[0]}
        metrics.update({f"loss/{t}": sums[1 + i] / sums[1 + n + i] for i, t in enumerate(tasks) if sums[1 + n + i]})
        tokens = sums[-1] * self.ctx.world_size
        metrics.update(lr=lr, grad_norm=grad_norm, tokens=tokens, tokens_per_s=tokens / elapsed, step_time_s=elapsed)
        return metrics

    def fit(self, *, resume: bool = False, max_steps: int | None = None) -> TrainResult:
        """Train to `schedule.max_steps` (or stop early at `max_steps`, keeping the schedule) or until a
        signal; the last step is always checkpointed."""
        if resume:
            self.resume()
        end = min(self.config.schedule.max_steps, max_steps or self.config.schedule.max_steps)
        main = self.ctx.is_main
        if self.sinks is not None:
            sinks = list(self.sinks)
        else:  # metrics are written once, by the main process; a resumed run drops what came after its checkpoint
            resumed = self.step if resume else None
            sinks = open_sinks(self.config.log, self.run_dir, self.config.to_dict(), resumed) if main else []
        from tqdm import tqdm

        bar = tqdm(total=end, initial=self.step, unit="step", disable=not (self.config.log.progress and main))
        batches = iter(self.source)
        try:
            with self._signals():
                while self.step < end and not self._stop_requested():
                    metrics = self.train_step(batches)
                    self.step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
                    finite = math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])
                    self._nonfinite = 0 if finite else self._nonfinite + 1
                    self._after_step(metrics, sinks)
                    self._check_diverged(metrics)
                stopped = self._signal if self.step < end else None
                checkpoint = self.save()
        finally:
            bar.close()
            for sink in sinks:
                sink.close()
        return TrainResult(self.step, stopped, checkpoint)

    def _after_step(self, metrics: Mapping[str, float], sinks: Sequence[MetricsSink]) -> None:
        log, step = self.config.log, self.step
        records = [metrics] if step % log.log_every == 0 else []
        if self.evaluate is not None and log.eval_every and step % log.eval_every == 0:
            records.append({f"eval/{k}": float(v) for k, v in self._hook(self.evaluate, step).items()})
        if self.preview is not None and log.preview_every and step % log.preview_every == 0:
            self._hook(self.preview, step, self.run_dir)
        for record in records:
            for sink in sinks:
                sink.log(record, step)
        if self.config.checkpoint.every and step % self.config.checkpoint.every == 0:
            self.save()

    def _check_diverged(self, metrics: Mapping[str, float]) -> None:
        patience, streak = self.config.optim.nonfinite_patience, self._nonfinite
        last = f"loss {metrics['loss']}, grad_norm {metrics['grad_norm']}"
        if streak == 1:
            logger.warning("step %d: non-finite loss or gradient norm (%s), update skipped", self.step, last)
        if patience and streak >= patience:
            raise NonFiniteLossError(
                f"step {self.step}: {streak} consecutive step(s) with a non-finite loss or gradient norm (last: "
                f"{last}; `optim.nonfinite_patience` = {patience}), stopped. {self._last_good()} Lower "
                "`optim.lr`, check `optim.max_grad_norm` and the data, then resume or restart.")

    def _last_good(self) -> str:
        latest = train_state.find_latest(self.run_dir)
        return (f"The last good checkpoint is {latest} (--resume continues from it)." if latest is not None
                else "No checkpoint was written.")

    def _hook(self, hook: Callable[..., Any], *args: Any) -> Any:
        self.model.eval()
        with torch.no_grad():
            return hook(self.model, *args)

    def save(self) -> Path | None:
        """Checkpoint the current step (at most once per step); returns its folder."""
        if self._saved_step == self.step:
            return train_state.find_latest(self.run_dir)
        if self.config.optim.nonfinite_patience and not self.dist.all_finite(self.model, self.ctx):
            raise NonFiniteLossError(f"step {self.step}: the weights hold non-finite values (NaN/inf), so they are "
                                     f"not checkpointed. {self._last_good()} Lower `optim.lr` and check the data.")
        path = train_state.save_checkpoint(
            self.run_dir, self.step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            data_state=self.source.state_dict(), config=self.config.to_dict(), generators=self.generators,
            keep_last=self.config.checkpoint.keep_last, assets=self.assets, collective=self._collective())
        self._saved_step = self.step
        logger.info("step %d: checkpoint %s", self.step, path)
        return path

    def resume(self) -> bool:
        """Restore the run folder's latest checkpoint; False (and a fresh start) when there is none."""
        latest = train_state.find_latest(self.run_dir)
        if latest is None:
            logger.warning("no checkpoint in %s: starting from step 0", self.run_dir)
            return False
        state = train_state.load_checkpoint(latest, model=self.model, optimizer=self.optimizer,
                                            scheduler=self.scheduler, generators=self.generators,
                                            collective=self._collective())
        self.source.load_state_dict(state.data_state)
        self.step = self._saved_step = state.step
        now = self.config.to_dict()
        changed = sorted(k for k in set(now) | set(state.config) if now.get(k) != state.config.get(k))
        if changed:  # allowed (e.g. a longer schedule), but worth a line in the log
            logger.warning("resuming with a config that differs from the checkpoint's in: %s", ", ".join(changed))
        logger.info("resumed from %s (step %d)", latest, state.step)
        return True

    def _collective(self) -> train_state.Collective:
        d, ctx = self.dist, self.ctx
        return train_state.Collective(
            rank=ctx.rank, world_size=ctx.world_size, barrier=lambda: d.barrier(ctx), agree=lambda ok: d.agree(ok, ctx),
            save_sharded=lambda model, optimizer, path: d.save_sharded(model, optimizer, path, ctx),
            load_sharded=lambda model, optimizer, path: d.load_sharded(model, optimizer, path, ctx))

    def _stop_requested(self) -> bool:
        if self.ctx.world_size == 1:
            return self._signal is not None
        flag = torch.tensor([float(self._signal is not None)], device=self.ctx.device)
        return bool(self.dist.all_reduce_mean(flag, self.ctx) > 0)  # stop together, or collectives hang

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # handlers can only be installed from the main thread
            return

        def handler(signum: int, frame: Any) -> None:
            self._signal = signum
            signal.signal(signum, previous[signal.Signals(signum)])  # a second signal acts as it would without us
            logger.warning("%s: finishing step %d, then checkpointing", signal.Signals(signum).name, self.step + 1)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def run_training(config: TrainConfig, *, resume: bool = False, model: MMaDAModel | None = None,
                 source: BatchSource | None = None, evaluate: EvalHook | None = None,
                 preview: PreviewHook | None = None, max_steps: int | None = None,
                 make_trainer: TrainerFactory | None = None) -> TrainResult:
    """Build the run `config` describes and train it. The caller seeds first (`seed_everything`).

    `model` / `source` replace the configured ones (tests, notebooks). `make_trainer` builds another
    kind of step over the same run set-up (lock, devices, wrapping, checkpoints): `mmada.rl` passes its
    UniGRPO trainer, which draws prompts instead of reading `data`. Without `resume`, a run folder that
    already holds checkpoints is refused rather than overwritten; a folder another live run holds is refused
    (`RunLockedError`), and one that cannot be written is a `RunFolderError`, both before any weights load.
    """
    run_dir = Path(config.log.run_dir)
    check_sinks(config.log)
    if not resume and (found := train_state.find_latest(run_dir)) is not None:
        raise ValueError(f"`log.run_dir` {run_dir} already holds checkpoints ({found.name}); pass --resume to "
                         "continue that run, or choose another --out")
    dist = _distributed()
    ctx = dist.init_distributed(device=None if config.device == "auto" else config.device)
    if ctx.world_size == 1 and config.device == "auto":  # one process picks like the rest of mmada: mps too
        ctx = dataclasses.replace(ctx, device=default_device())
    lock = RunLock(run_dir) if ctx.is_main else None
    try:
        acquire_on_main(lock, agree=lambda ok: dist.agree(ok, ctx))
        model = (model if model is not None else build_model(config.model, ctx.device)).to(ctx.device)
        tokenizers = load_tokenizers(config.model, model, ctx.device)
        if source is None and make_trainer is None:
            source = build_source(config.data, tokenizer=tokenizers.text, vocab=tokenizers.vocab,
                                  image_tokenizer=tokenizers.image, seed=config.seed, rank=ctx.rank,
                                  world_size=ctx.world_size)
        hooks = PipelineHooks(tokenizers, config.log, write=ctx.is_main) if tokenizers.text is not None else None
        preview = preview or (hooks.preview if hooks and config.log.preview_every else None)
        evaluate = evaluate or (hooks.evaluate if hooks and config.log.eval_every else None)
        if ctx.is_main:
            import yaml

            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
        bf16 = _use_bf16(ctx.device, config.model.mixed_precision)
        wrapped = dist.wrap_model(model, ctx, fsdp=config.model.fsdp, mixed_precision=bf16)
        if make_trainer is not None:
            trainer = make_trainer(wrapped, config, ctx=ctx, tokenizers=tokenizers, evaluate=evaluate,
                                   preview=preview)
        else:
            trainer = Trainer(wrapped, MaskedDiffusionObjective(config.objective), source, config, ctx=ctx,
                              evaluate=evaluate, preview=preview, assets=tokenizers.files)
        return trainer.fit(resume=resume, max_steps=max_steps)
    finally:
        if lock is not None:
            lock.release()
        dist.teardown(ctx)


def _distributed() -> Any:
    from . import distributed  # imports torch.distributed: only once training starts

    return distributed


def _use_bf16(device: torch.device, mode: str) -> bool:
    """bf16 autocast for "bf16", and for "auto" on accelerators that support it; never on CPU by default."""
    if mode == "none" or (mode == "auto" and device.type == "cpu"):
        return False
    supported = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if mode == "bf16" and not supported:
        raise ValueError("`model.mixed_precision` is 'bf16' but this GPU does not support bfloat16")
    return supported
