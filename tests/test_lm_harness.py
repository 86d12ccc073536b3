"""The lm-evaluation-harness adapter on the built-in model and two local tasks (nothing downloaded).

tests/fixtures/lm_eval/ holds eight tiny-world word problems (arithmetic.jsonl) and two tasks over
them: `mmada_arith_gen` (generate_until, thinking mode, the answer read after </think>) and
`mmada_arith_mc` (multiple_choice: the answer against a garbage string, loglikelihood requests).
lm_eval reads a task's `data_files` relative to the working directory, so `tasks_dir` copies the
YAMLs with the data path made absolute.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest
import torch
import yaml
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from mmada.diffusion.masking import random_subsets
from mmada.evaluation.likelihood import continuation_loglikelihood, greedy_reproduces, stratified_mask_counts
from mmada.evaluation.lm_harness import MMaDALM, generation_plan, with_device_default
from mmada.pipelines import MMaDAPipeline
from mmada.prompting import encode_chat
from mmada.prompting.chat import with_thinking
from mmada.sampling import InfillSampling, TextSampling
from mmada.sampling.inpaint import infill_text
from mmada.utils.files import BUILTIN_MODELS, DEFAULT_MODEL

FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
SETTINGS = {"gen_length": 32, "steps": 16}  # over the checkpoint's block_length 32: 16 steps per block
QUESTION = "Sam has 15 stickers. He shares them equally among 3 friends. How many stickers does each friend get?"


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Any download attempt fails: datasets and huggingface_hub read these once, at import."""
    import datasets.config
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        for name, value in OFFLINE.items():
            mp.setenv(name, value)
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        mp.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def pipe():
    return MMaDAPipeline.from_pretrained(BUILTIN_MODELS[DEFAULT_MODEL])


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    for path in FIXTURES.glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        files = config["dataset_kwargs"]["data_files"]
        files["test"] = str(FIXTURES / files["test"])
        (folder / path.name).write_text(yaml.safe_dump(config))
    return folder


def evaluate(lm: MMaDALM, task: str, tasks_dir: Path, **kwargs) -> dict:
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    return lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, log_samples=True, **kwargs)


def thinking_context(lm: MMaDALM, question: str) -> str:
    """A context as lm_eval renders it with --apply_chat_template, in thinking mode (long answers)."""
    return lm.apply_chat_template(with_thinking([{"role": "user", "content": question}]))


def generate(lm: MMaDALM, contexts: list[str], **gen_kwargs) -> list[str]:
    requests = [Instance("generate_until", {}, (c, gen_kwargs), i) for i, c in enumerate(contexts)]
    return lm.generate_until(requests, disable_tqdm=True)


def questions() -> list[str]:
    return [json.loads(line)["question"] for line in (FIXTURES / "arithmetic.jsonl").read_text().splitlines()]


# ---- generate_until -------------------------------------------------------------------------------
def test_generate_until_task_gives_the_pipelines_answers(pipe, tasks_dir):
    lm = MMaDALM(pipeline=pipe, batch_size=4, **SETTINGS)
    out = evaluate(lm, "mmada_arith_gen", tasks_dir, limit=4, apply_chat_template=True)
    samples = out["samples"]["mmada_arith_gen"]
    # The task asks max_gen_toks 64: two blocks of 32 at the model args' 16 steps per block.
    expected = pipe.generate_batch([s["doc"]["question"] for s in samples], thinking=True, gen_length=64, steps=32)
    assert [s["resps"][0][0] for s in samples] == [r.text.split("\n\n")[0] for r in expected]
    assert any("</think>" in s["resps"][0][0] for s in samples)  # real answers, not empty strings
    assert 0 <= out["results"]["mmada_arith_gen"]["exact_match,final_answer"] <= 1


def test_generate_until_does_not_depend_on_batching(pipe):
    contexts = [thinking_context(MMaDALM(pipeline=pipe), q) for q in questions()[:4]]  # four lengths
    alone = generate(MMaDALM(pipeline=pipe, batch_size=1, **SETTINGS), contexts, until=[], max_gen_toks=32)
    batched = generate(MMaDALM(pipeline=pipe, batch_size=4, **SETTINGS), contexts, until=[], max_gen_toks=32)
    assert batched == alone
    direct = pipe.complete_batch(contexts, parse_special=True, **SETTINGS)  # no sorting, one batch
    assert alone == [r.text for r in direct]


def test_stop_sequences_and_max_gen_toks_cut_the_text(pipe):
    lm = MMaDALM(pipeline=pipe, **SETTINGS)
    context = thinking_context(lm, QUESTION)
    (full,) = generate(lm, [context], until=[], max_gen_toks=32)
    assert ". " in full and "=" in full
    assert generate(lm, [context], until=". ", max_gen_toks=32) == [full[: full.index(". ")]]
    first = min(full.index(". "), full.index("="))
    assert generate(lm, [context], until=["=", ". "], max_gen_toks=32) == [full[:first]]
    tokens = pipe.complete_batch([context], parse_special=True, **SETTINGS)[0].tokens
    (short,) = generate(lm, [context], until=[], max_gen_toks=5)
    assert short == pipe.decode_answer(tokens[:5]).text
    assert full.startswith(short) and len(short) < len(full)


def test_generation_plan_applies_the_request_over_the_model_args(caplog):
    base = TextSampling(gen_length=128, steps=64, block_length=32, temperature=0.5)
    plan = generation_plan(base, {"until": "\n", "max_gen_toks": 40})
    assert (plan.settings.gen_length, plan.settings.steps, plan.max_gen_toks, plan.until) == (64, 32, 40, ["\n"])
    assert plan.settings.temperature == 0.5  # no sampling kwargs: the model args'
    assert generation_plan(base, {"do_sample": False, "temperature": 0.7}).settings.temperature == 0.0
    assert generation_plan(base, {"do_sample": True, "temperature": 0.7}).settings.temperature == 0.7
    assert generation_plan(base, {}).settings == base
    alias = generation_plan(base, {"max_new_tokens": 10})
    assert (alias.max_gen_toks, alias.settings.gen_length, alias.settings.steps) == (10, 32, 16)
    with caplog.at_level("WARNING"):
        assert generation_plan(base, {"top_p": 0.9}).settings == base
    assert "top_p" in caplog.text
    with pytest.raises(ValueError, match="max_gen_toks"):
        generation_plan(base, {"max_gen_toks": 0})


# ---- loglikelihood --------------------------------------------------------------------------------
def test_loglikelihood_is_a_seeded_finite_estimate(pipe):
    lm = MMaDALM(pipeline=pipe, mc_num=8, mc_batch_size=8, check_greedy=False)
    context = lm.apply_chat_template([{"role": "user", "content": QUESTION}])
    pairs = [(context, "5"), (context, "zq#v"), ("", "Sam has 15 stickers.")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    first = lm.loglikelihood(requests, disable_tqdm=True)
    assert all(math.isfinite(logp) and logp < 0 and greedy is False for logp, greedy in first)
    assert lm.loglikelihood(requests[::-1], disable_tqdm=True) == first[::-1]  # per request, not per position
    other_seed = MMaDALM(pipeline=pipe, mc_num=8, mc_batch_size=8, check_greedy=False, seed=7)
    assert [x for x, _ in other_seed.loglikelihood(requests, disable_tqdm=True)] != [x for x, _ in first]
    small_batches = MMaDALM(pipeline=pipe, mc_num=8, mc_batch_size=3, check_greedy=False)
    for (a, _), (b, _) in zip(small_batches.loglikelihood(requests, disable_tqdm=True), first):
        assert a == pytest.approx(b, rel=1e-5)  # the batch size changes memory, not the estimate


def test_mask_counts_are_stratified_and_subsets_exact():
    counts = stratified_mask_counts(12, 12, generator=torch.Generator().manual_seed(3))
    assert sorted(counts.tolist()) == list(range(1, 13))  # one sample per count when samples == length
    counts = stratified_mask_counts(40, 7, generator=torch.Generator().manual_seed(4))
    assert int(counts.min()) >= 1 and int(counts.max()) <= 7
    hidden = random_subsets(counts, 7, generator=torch.Generator().manual_seed(5))
    assert hidden.sum(dim=1).tolist() == counts.tolist()


def test_the_bound_is_exact_for_a_uniform_model():
    """Every masked token has log-probability -log V, and n / l times l of them gives -n log V in every sample:
    the estimate is exact whatever the masks, which pins the n / l weighting."""
    vocab = 11

    def uniform(input_ids, attention_mask=None, *, positions=None):
        return torch.zeros(int(positions.sum()), vocab)  # (N, V) at the asked positions

    for cfg_scale in (0.0, 1.5):
        logp = continuation_loglikelihood(uniform, [1, 2, 3], [4, 5, 6, 7, 8], mask_id=10, num_samples=7,
                                          batch_size=3, cfg_scale=cfg_scale, generator=torch.Generator())
        assert logp == pytest.approx(-5 * math.log(vocab), rel=1e-6)  # float32 log-softmax


def test_the_greedy_continuation_outscores_random_tokens(pipe):
    lm = MMaDALM(pipeline=pipe, mc_num=16, mc_batch_size=16)
    prefix = encode_chat(pipe.tokenizer, [{"role": "user", "content": QUESTION}])
    mask_id = pipe.vocab.mask_id
    masked = torch.tensor([[*prefix, *[mask_id] * 6]])
    greedy = infill_text(pipe.model, masked, InfillSampling(steps=6, temperature=0.0), mask_id=mask_id)[0, len(prefix):]
    greedy_ids = greedy.tolist()
    random_ids = torch.randint(0, 700, (6,), generator=torch.Generator().manual_seed(0)).tolist()  # plain text ids
    assert greedy_reproduces(pipe.model, prefix, greedy_ids, mask_id=mask_id)
    assert not greedy_reproduces(pipe.model, prefix, random_ids, mask_id=mask_id)

    def score(target: list[int]) -> float:
        return continuation_loglikelihood(pipe.model, prefix, target, mask_id=mask_id, num_samples=16, batch_size=16,
                                          generator=torch.Generator().manual_seed(0))

    assert score(greedy_ids) > score(random_ids) + 5
    # Through the adapter: the decoded greedy text round-trips through the tokenizer, so is_greedy holds.
    text = pipe.tokenizer.decode(greedy_ids, skip_special_tokens=False)
    context = pipe.tokenizer.decode(prefix, skip_special_tokens=False)
    assert pipe.tokenizer.encode(context + text) == prefix + greedy_ids
    (logp, is_greedy), (_, random_greedy) = lm.loglikelihood(
        [Instance("loglikelihood", {}, (context, text), 0),
         Instance("loglikelihood", {}, (context, pipe.tokenizer.decode(random_ids)), 1)], disable_tqdm=True)
    assert is_greedy and not random_greedy and math.isfinite(logp)


def test_multiple_choice_task_prefers_the_answer_to_garbage(pipe, tasks_dir):
    lm = MMaDALM(pipeline=pipe, mc_num=8, mc_batch_size=8, check_greedy=False)
    out = evaluate(lm, "mmada_arith_mc", tasks_dir, limit=4)
    for sample in out["samples"]["mmada_arith_mc"]:
        (answer, _), (garbage, _) = (resp[0] for resp in sample["resps"])
        assert math.isfinite(answer) and answer < 0 and answer > garbage
    assert out["results"]["mmada_arith_mc"]["acc,none"] == 1.0


def test_rolling_loglikelihood_of_a_short_text_is_its_unconditional_loglikelihood(pipe):
    lm = MMaDALM(pipeline=pipe, mc_num=4, mc_batch_size=4, check_greedy=False)
    text = "Sam has 15 stickers. He shares them equally among 3 friends."
    (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    ((unconditional, _),) = lm.loglikelihood([Instance("loglikelihood", {}, ("", text), 0)], disable_tqdm=True)
    assert rolling == unconditional and rolling < 0
    long = " ".join(questions() * 4)  # beyond max_sequence_length: several windows
    assert len(pipe.tokenizer.encode(long)) > 512
    (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (long,), 0)], disable_tqdm=True)
    assert math.isfinite(total) and total < rolling


# ---- model args, chat template, pipeline ----------------------------------------------------------
@pytest.mark.parametrize(("args", "match"), [
    ({"mc_num": 0}, "`model_args.mc_num` must be >= 1"),
    ({"mc_batch_size": "many"}, "`model_args.mc_batch_size` expects int"),
    ({"temprature": 0.5}, "unknown mmada model arg `model_args.temprature`"),
    ({"steps": "fast"}, "`model_args.steps` expects int"),
    ({"gen_length": 80, "steps": 16}, "`model_args.gen_length` .* divisible by `model_args.block_length`"),
    ({"remasking": "best"}, "`model_args.remasking` must be one of"),
    ({"preset": "fastest-ever"}, "preset 'fastest-ever'"),
    ({"dtype": "int8"}, "int8"),
    ({"pretrained": "mmada-tiny"}, "pretrained describe the model to load"),
])
def test_bad_model_args_are_refused_in_one_line(pipe, args, match):
    with pytest.raises(ValueError, match=match) as err:
        MMaDALM(pipeline=pipe, **args)
    assert "\n" not in str(err.value)


def test_model_args_reach_the_sampler(pipe):
    lm = MMaDALM(pipeline=pipe, preset="fast", gen_length=64, steps=32, threshold=0.9, temperature="0.5")
    assert (lm.sampling.cache, lm.sampling.gen_length, lm.sampling.steps) == ("delayed", 64, 32)
    assert (lm.sampling.threshold, lm.sampling.temperature) == (0.9, 0.5)
    assert MMaDALM(pipeline=pipe).sampling == pipe.settings.text


def test_apply_chat_template_renders_as_the_pipeline_encodes(pipe):
    lm = MMaDALM(pipeline=pipe)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    assert pipe.tokenizer.encode(lm.apply_chat_template(chat)) == encode_chat(pipe.tokenizer, chat)
    assert lm.tokenizer_name == MMaDALM(pipeline=pipe).tokenizer_name
    assert "start_header_id" in lm.chat_template()


def test_complete_batch_refuses_or_truncates_a_long_prompt(pipe, caplog):
    long = "Sam has 15 stickers. " * 120  # ~600 tokens, above max_sequence_length 512
    with pytest.raises(ValueError, match="max_sequence_length"):
        pipe.complete_batch([long], **SETTINGS)
    with caplog.at_level("WARNING"):
        (result,) = pipe.complete_batch([long, "Sam has"], truncate=True, **SETTINGS)[:1]
    assert "cut to their last 479 tokens" in caplog.text and result.tokens.shape == (32,)


def test_with_device_default():
    assert with_device_default(["--model", "mmada"]) == ["--model", "mmada", "--device", "auto"]
    assert with_device_default(["--device", "cpu"]) == ["--device", "cpu"]
    assert with_device_default(["--device=cpu"]) == ["--device=cpu"]
    assert with_device_default(["--config", "run.yaml"]) == ["--config", "run.yaml"]


# ---- entry points ---------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    return {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}


def test_console_script_runs_a_local_task_end_to_end(tasks_dir, tmp_path):
    script = shutil.which("mmada-lm-eval")
    assert script, "the mmada-lm-eval console script is not installed (pip install -e '.[dev]')"
    args = [script, "--model", "mmada", "--model_args", f"pretrained={DEFAULT_MODEL},mc_num=4,mc_batch_size=4,"
            + ",".join(f"{k}={v}" for k, v in SETTINGS.items()), "--tasks", "mmada_arith_gen", "mmada_arith_mc",
            "--include_path", str(tasks_dir), "--limit", "2", "--output_path", str(tmp_path / "out")]
    run = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (path,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(path.read_text())["results"]
    assert 0 <= results["mmada_arith_gen"]["exact_match,final_answer"] <= 1
    assert results["mmada_arith_mc"]["acc,none"] == 1.0


def test_module_runs_lm_evals_command_line():
    run = subprocess.run([sys.executable, "-m", "mmada.evaluation.lm_harness", "--help"], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "--model_args" in run.stdout


def test_import_without_lm_eval_names_the_extra():
    code = "import sys; sys.modules['lm_eval'] = None; import mmada.evaluation.lm_harness"
    run = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "pip install 'mmada[eval]'" in run.stderr.strip().splitlines()[-1]
