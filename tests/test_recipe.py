"""The recipe end to end, scaled down to a few steps: every artefact exists and loads."""

from __future__ import annotations

import json

import pytest
import torch

import mmada
from mmada.pipelines import MMaDAPipeline
from mmada.recipe import RecipeConfig, run_tiny_recipe

SMALL = ("log.eval_every=0", "log.preview_every=0", "data.pool_size=64", "checkpoint.every=0",
         "schedule.warmup_steps=1")
SMALL_MODEL = ("model.overrides.d_model=32", "model.overrides.n_heads=2", "model.overrides.n_kv_heads=2",
               "model.overrides.n_layers=1", "model.overrides.mlp_hidden_size=64")
SMALL_RL = ("rl.prompts_per_step=2", "rl.unigrpo.group_size=2", "rl.unigrpo.inner_steps=1",
            "rl.text={gen_length: 8, steps: 4, block_length: 8}", "rl.image={timesteps: 2}")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_scaled_down_recipe_produces_every_artefact(tmp_path):
    recipe = RecipeConfig(out_dir=str(tmp_path), pretrain_steps=2, sft_steps=2, rl_steps=2, eval_per_group=1,
                          eval_limit=1, overrides=SMALL, pretrain_overrides=SMALL_MODEL, rl_overrides=SMALL_RL)
    result = run_tiny_recipe(recipe)
    assert result.model_dir == tmp_path / "mmada-tiny"
    for stage in ("pretrain", "sft", "unigrpo", "sft_nocot"):
        assert (tmp_path / stage / "latest").is_file()
        assert set(result.scores[stage]) == {"arithmetic", "vqa", "t2i", "digit_t2i", "digit_recognition"}
    folder = result.model_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "mmada_pipeline.json", "README.md",
                 "image_tokenizer/config.json", "image_tokenizer/model.safetensors"):
        assert (folder / name).is_file(), name
    model = mmada.load_model(folder)
    assert model.config.d_model == 32
    pipe = MMaDAPipeline.from_pretrained(folder)
    assert pipe.settings.resolution == 32 and pipe.num_image_tokens == 64
    assert pipe.generate("What is 2 + 3?", gen_length=8, steps=4, block_length=8).tokens.shape == (8,)
    assert pipe.text_to_image("a red circle", timesteps=2)[0].size == (32, 32)
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert set(scores["seconds"]) == {"pretrain", "sft", "unigrpo", "sft_nocot", "pretrain eval", "sft eval",
                                      "unigrpo eval", "sft_nocot eval", "total"}
    assert "UniGRPO" in (folder / "README.md").read_text()  # the exported model is the post-RL one
    table = (tmp_path / "results.md").read_text()
    assert table in (folder / "README.md").read_text()
    header, _, *rows = table.splitlines()
    assert header == ("| task | group | after pretraining | after mixed-CoT SFT "
                      "| mixed-CoT SFT, asked without thinking | after UniGRPO | UniGRPO, asked without thinking "
                      "| SFT without CoT (ablation) |")
    assert any(row.startswith("| arithmetic | 3 steps | ") for row in rows) and len(rows) > 30
