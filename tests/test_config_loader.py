"""The one config loader (`mmada.utils.config`): files and overrides into typed dataclasses, errors naming keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from mmada.training.config import TrainConfig, load_config
from mmada.training.data import MixtureSpec
from mmada.training.data_world import WorldSftSpec, WorldSpec
from mmada.utils.config import build, field_docs, merge, set_override, to_dict


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    """A rate in [0, 1]."""
    names: tuple[str, ...] = ("a",)
    weights: dict[str, float] = field(default_factory=lambda: {"x": 1.0, "y": 2.0})
    path: str | None = "here"

    def __post_init__(self) -> None:
        if not 0 <= self.rate <= 1:
            raise ValueError(f"`rate` must lie in [0, 1], got {self.rate}")


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    kind: Literal["a", "b"] = "a"
    steps: int = 1


def overridden(*items: str) -> Outer:
    raw: dict = {}
    for item in items:
        set_override(raw, item, Outer)
    return build(Outer, raw)


def test_values_are_converted_from_the_field_types():
    config = overridden("inner.rate=0.25", "inner.names=p,q", "kind=b", "steps=7", "inner.path=1234")
    assert config == Outer(Inner(0.25, ("p", "q"), {"x": 1.0, "y": 2.0}, "1234"), "b", 7)
    assert overridden("inner.path=null").inner.path is None  # a string field keeps text, but Optional says null
    assert overridden("inner.names=[u, v]").inner.names == ("u", "v")


def test_a_mapping_overrides_only_the_keys_it_names():
    assert overridden("inner.weights.y=5").inner.weights == {"x": 1.0, "y": 5.0}


@pytest.mark.parametrize(("items", "message"), [
    (["inner.rat=1"], "unknown config key `inner.rat`; valid keys of `inner`: rate, names, weights, path"),
    (["inner.rate=2"], "`inner.rate` must lie in [0, 1], got 2.0"),
    (["inner.rate=fast"], "`inner.rate` expects float, got 'fast'"),
    (["kind=c"], "`kind` must be one of 'a', 'b', got 'c'"),
    (["steps=1.5"], "`steps` expects int, got 1.5"),
    (["inner=3"], "`inner` is a section"),
    (["steps.x=3"], "`steps` is a value, not a section"),
    (["steps"], "must look like section.key=value"),
])
def test_bad_values_and_keys_name_the_key(items, message):
    with pytest.raises(ValueError) as err:
        overridden(*items)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_round_trip_and_docs():
    config = overridden("inner.rate=0.1")
    assert build(Outer, to_dict(config)) == config
    raw: dict = {"inner": {"rate": 0.2}}
    merge(raw, {"inner": {"names": ["z"]}})
    assert raw == {"inner": {"rate": 0.2, "names": ["z"]}}
    assert field_docs(Inner)["rate"] == "A rate in [0, 1]."


def test_the_data_section_is_typed_and_checked_on_loading():
    """`data.name` picks the spec class; its keys are checked with the rest, before any weights load."""
    assert isinstance(load_config(["tiny_pretrain"]).data, WorldSpec)
    assert isinstance(load_config(["tiny_sft"]).data, WorldSftSpec)
    assert isinstance(load_config(["stage1_1"]).data, MixtureSpec)
    assert load_config(["tiny_sft"], ["data.plain_fraction=0.5"]).data.plain_fraction == 0.5
    for override, message in [
        ("data.cot=false", "unknown config key `data.cot`"),  # world_pretrain has no CoT rows
        ("data.batch_sizes.t2i=x", "`data.batch_sizes.t2i` expects int, got 'x'"),
        ("data.name=nope", "`data.name` must be one of 'mixture', 'world_pretrain', 'world_sft', got 'nope'"),
        ("data.weights.mmu.vqa=-1", "`data.weights.mmu.vqa`"),
    ]:
        with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
            load_config(["tiny_pretrain"], [override])
    with pytest.raises(ValueError, match=r"`data\.tasks\.t2i\.batch_sizes` is not a known key|data\.tasks\.t2i"):
        load_config(["stage1_1"], ["data.tasks.t2i.batch_sizes=3"])
    assert TrainConfig().data is None


def test_pipeline_settings_load_by_the_same_loader(tmp_path):
    import json
    import shutil

    from mmada.pipelines import MMaDAPipeline, PipelineSettings
    from mmada.utils.files import BUILTIN_MODELS, CheckpointError

    saved = PipelineSettings.from_dict({"max_text_len": 64, "text": {"gen_length": "256"}})
    assert saved.text.gen_length == 256 and PipelineSettings.from_dict(saved.to_dict()) == saved
    folder = shutil.copytree(BUILTIN_MODELS["mmada-tiny"], tmp_path / "model")
    (folder / "mmada_pipeline.json").write_text(json.dumps({"text": {"gen_lenght": 32}}))
    with pytest.raises(CheckpointError, match=r"mmada_pipeline\.json: unknown config key `text\.gen_lenght`"):
        MMaDAPipeline.from_pretrained(folder)
    (folder / "mmada_pipeline.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"mmada_pipeline\.json: "):
        MMaDAPipeline.from_pretrained(folder)


def test_a_preset_takes_its_special_ids_from_its_tokenizer():
    """The YAML configs do not repeat vocabulary ids: [MASK] / EOS / padding come from the text tokenizer."""
    from mmada.prompting import TextTokenizer
    from mmada.training.config import build_model, resolve_asset

    section = load_config(["tiny_pretrain"], ["model.overrides.n_layers=1"]).model
    assert "mask_token_id" not in section.overrides
    config = build_model(section, "cpu").config
    tokenizer = TextTokenizer.from_pretrained(resolve_asset("world", "text"))
    ids = (config.mask_token_id, config.eos_token_id)
    assert ids == (tokenizer.mask_token_id, tokenizer.eos_token_id) == (764, 750)
    kept = load_config(["tiny_pretrain"], ["model.overrides.n_layers=1", "model.overrides.eos_token_id=3"]).model
    assert build_model(kept, "cpu").config.eos_token_id == 3  # named overrides win
