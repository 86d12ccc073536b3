"""Bad inputs and faults through the `mmada` command line (issue 13): each gives one line on stderr naming
the problem and a known exit code; paths are never mistaken for hub ids; jsonl data skips bad records
one by one; `--help` shows the built-in model's real defaults; the model card names no machine path."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from PIL import Image

import mmada.cli
from mmada.cli import PIPELINE_FILE, main
from mmada.training.data import RecordStream
from mmada.training.data_adapters import SkipCounter, SourceSpec
from mmada.utils.files import BUILTIN_MODELS, DEFAULT_MODEL, OFFLINE_ENV, FolderNotFoundError, resolve_folder
from mmada.utils.logging import describe_error

REPO = Path(__file__).resolve().parents[1]
BUILTIN = BUILTIN_MODELS[DEFAULT_MODEL]
FAST_IMAGE = ["--timesteps", "2", "-q", "--seed", "0"]


def run_error(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 2) -> str:
    """Run the CLI, expect exit `code` and exactly one line on stderr (no traceback); return that line."""
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def parse_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """A usage error: argparse exits 2 with one line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub access on for this test, whatever the environment says (restored after it, also when --offline sets
    the variable)."""
    import huggingface_hub.constants

    monkeypatch.setenv(OFFLINE_ENV, "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record every call of `huggingface_hub.snapshot_download` (and make it fail like an offline cache miss)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls: list[dict] = []

    def fake(**kwargs):
        calls.append(kwargs)
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake)
    online(monkeypatch)
    return calls


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "scene.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return path


# ---- numeric flags refused by argparse, one line ----------------------------------------------------
@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "x", "--threads", "0"], "mmada generate: error: argument --threads: must be >= 1, got 0"),
    (["t2i", "x", "--threads", "-2"], "argument --threads: must be >= 1, got -2"),
    (["generate", "x", "--threads", "two"], "argument --threads: expected an integer, got 'two'"),
    (["recipe", "--threads", "0"], "mmada recipe: error: argument --threads: must be >= 1, got 0"),
    (["eval", "world", "--per-group", "0"], "argument --per-group: must be >= 1, got 0"),
    (["world", "sample", "--n", "0"], "argument --n: must be >= 1, got 0"),
    (["t2i", "x", "--max-text-len", "0"], "argument --max-text-len: must be >= 1, got 0"),
])
def test_bad_counts_are_refused_in_one_line(argv, message, capsys):
    assert message in parse_error(argv, capsys)


# ---- paths vs hub ids --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["./missing-model", "~/no-such-mmada-model", "a/b/c", "/abs/missing", "..\\win",
                                  "runs/typo"])
def test_path_like_missing_folder_is_no_such_folder_never_a_download(name, no_hub, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # `runs/typo` names a folder inside an existing local folder: a path
    err = run_error(["info", name], capsys)
    assert f"mmada info: error: no such folder: {name} (it does not exist; a path is never looked up" in err
    assert no_hub == []


def test_plain_missing_name_is_not_a_hub_id(no_hub, capsys):
    err = run_error(["info", "no-such-model-xyz"], capsys)
    assert "no such folder: no-such-model-xyz (it does not exist; not a hub id like 'owner/name')" in err
    assert no_hub == []


def test_generate_with_missing_relative_model_does_not_download(no_hub, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    err = run_error(["generate", "hi", "--model", "runs/typo", "-q"], capsys)
    assert err == "mmada generate: error: no such folder: runs/typo (it does not exist; a path is never looked " \
                  "up on the hub)"
    assert no_hub == []


def test_python_api_raises_file_not_found_for_a_missing_path(no_hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no such folder"):  # also a CheckpointError, for older callers
        resolve_folder("./missing")
    assert issubclass(FolderNotFoundError, FileNotFoundError) and no_hub == []


def test_a_file_is_not_a_checkpoint_folder(capsys, png):
    assert "is a file; pass the folder that holds config.json" in run_error(["info", str(png)], capsys)


def test_hub_id_is_fetched_only_without_a_local_folder(monkeypatch, capsys, tmp_path):
    calls: list[dict] = []
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda **kw: calls.append(kw) or str(BUILTIN))
    online(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert main(["info", "owner/model"]) == 0
    assert [c["repo_id"] for c in calls] == ["owner/model"] and calls[0]["local_files_only"] is False
    (tmp_path / "owner").mkdir()  # a local folder `owner` makes `owner/model` a path
    assert "no such folder: owner/model" in run_error(["info", "owner/model"], capsys)
    assert len(calls) == 1


@pytest.mark.parametrize("how", ["flag before", "flag after", "env"])
def test_offline_reads_the_cache_only(how, no_hub, capsys, monkeypatch):
    argv = {"flag before": ["--offline", "info", "owner/model"], "flag after": ["info", "owner/model", "--offline"],
            "env": ["info", "owner/model"]}[how]
    if how == "env":
        monkeypatch.setenv(OFFLINE_ENV, "1")
    err = run_error(argv, capsys)
    assert "could not download 'owner/model' from the Hugging Face hub: offline mode is on" in err
    assert [c["local_files_only"] for c in no_hub] == [True]


# ---- files: missing, corrupt, not UTF-8, unwritable, full disk --------------------------------------
def test_non_utf8_prompt_is_refused_by_name(capsys):
    err = run_error(["generate", "caf\udce9", "-q"], capsys)  # how Python hands over argv byte 0xE9
    assert err.startswith("mmada generate: error: argument PROMPT: not valid UTF-8 text")


def test_non_utf8_config_file_is_named(capsys, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_bytes(b"seed: 1\nname: caf\xe9\n")
    err = run_error(["train", str(config), "-q"], capsys)
    assert "bad.yaml" in err and "UTF-8" in err.upper()


@pytest.mark.parametrize(("content", "message"), [
    (b"not an image at all", "is not a readable image"),
    (None, "does not exist"),
    ("truncated", "is not a readable image"),
])
def test_bad_mask_file_is_one_line_before_the_model_loads(content, message, capsys, tmp_path, png, monkeypatch):
    mask = tmp_path / "mask.png"
    if content == "truncated":
        Image.new("L", (32, 32), 255).save(mask)
        mask.write_bytes(mask.read_bytes()[:40])
    elif content is not None:
        mask.write_bytes(content)
    monkeypatch.setattr(mmada.cli, "_pipeline", lambda args: pytest.fail("the model must not load"))
    err = run_error(["inpaint", str(png), "x", "--mask", str(mask), "-q"], capsys)
    assert "mask.png" in err and message in err


def test_box_and_mask_together_are_refused(capsys, png):
    err = run_error(["inpaint", str(png), "x", "--box", "0", "0", "8", "8", "--mask", str(png), "-q"], capsys)
    assert "give exactly one of --box" in err


def test_corrupt_image_to_understand(capsys, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    err = run_error(["understand", str(bad), "what is it?", "-q"], capsys)
    assert "bad.png" in err and "not a readable image" in err


def test_output_into_a_file_instead_of_a_folder(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    err = run_error(["world", "sample", "--n", "1", "-o", str(tmp_path / "afile" / "out.png")], capsys)
    assert err == f"mmada world: error: not a directory: {tmp_path / 'afile'}"


def test_output_into_a_read_only_folder(capsys, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real = __import__("tempfile").TemporaryFile

    def denied(*args, dir=None, **kwargs):  # what a read-only folder does, also to root
        if dir is not None and Path(dir) == ro:
            raise PermissionError(errno.EACCES, "Permission denied", str(ro / "tmpx"))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr("tempfile.TemporaryFile", denied)
    monkeypatch.setattr(mmada.cli, "_pipeline", lambda args: pytest.fail("the model must not load"))
    err = run_error(["t2i", "x", "-o", str(ro / "out.png"), "-q"], capsys)
    assert err == f"mmada t2i: error: permission denied: {ro}"


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs /sys (a read-only file system for everyone)")
def test_output_into_a_system_folder(capsys):
    err = run_error(["world", "sample", "--n", "1", "-o", "/sys/mmada-test/out.png"], capsys)
    assert err.endswith(": /sys/mmada-test") and ("not permitted" in err or "denied" in err or "read-only" in err)


def test_full_disk_while_writing(capsys, tmp_path, monkeypatch):
    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Image.Image, "save", full)
    err = run_error(["world", "sample", "--n", "1", "-o", str(tmp_path / "grid.png")], capsys)
    assert err == f"mmada world: error: no space left on device while writing {tmp_path / 'grid.png'}"


def test_missing_optional_package_names_the_pip_command(capsys, tmp_path, monkeypatch):
    def needs_matplotlib(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr("mmada.world.preview.sample_grid", needs_matplotlib)
    err = run_error(["world", "sample", "-o", str(tmp_path / "g.png")], capsys)
    assert err == ("mmada world: error: the optional package 'matplotlib' is not installed: "
                   "pip install 'mmada[plots]'")


@pytest.mark.parametrize(("error", "expected"), [
    (ModuleNotFoundError("No module named 'wandb'", name="wandb"), "pip install wandb"),
    (ImportError("the parquet source needs pyarrow: pip install 'mmada[data]'"), "pip install 'mmada[data]'"),
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/x"), "is a directory: /x"),
    (ValueError("line one\nline two"), "line one; line two"),
    (MemoryError(), "out of memory"),
    (UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte"), "is not UTF-8 text (byte 0xff at offset 2)"),
])
def test_describe_error_one_line_exit_2(error, expected):
    message, code = describe_error(error)
    assert expected in message and "\n" not in message and code == 2


def test_unexpected_error_is_one_line_exit_1_and_debug_shows_it(capsys, monkeypatch, tmp_path):
    def boom(*args, **kwargs):
        raise RuntimeError("something odd\nsecond line")

    monkeypatch.setattr("mmada.world.preview.sample_grid", boom)
    argv = ["world", "sample", "-o", str(tmp_path / "g.png")]
    err = run_error(argv, capsys, code=1)
    assert err == ("mmada world: error: unexpected RuntimeError: something odd; second line (run with "
                   "--debug for the traceback)")
    for debug in (["--debug", *argv], [*argv, "--debug"]):
        with pytest.raises(RuntimeError, match="something odd"):
            main(debug)


def test_debug_reraises_user_errors_too(no_hub):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        main(["info", "./nope", "--debug"])


def test_ctrl_c_exits_130(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("mmada.world.preview.sample_grid", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["world", "sample", "-o", str(tmp_path / "g.png")]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


# ---- consolidate ---------------------------------------------------------------------------------------
def test_consolidate_refuses_what_is_not_a_checkpoint(capsys, tmp_path):
    assert "no such folder: " in run_error(["consolidate", str(tmp_path / "nope"), "-o", str(tmp_path / "o")], capsys)
    err = run_error(["consolidate", str(tmp_path), "-o", str(tmp_path / "o")], capsys)
    assert "holds no complete training checkpoint" in err
    (tmp_path / "step-000002" / "model").mkdir(parents=True)
    (tmp_path / "step-000002" / "trainer.json").write_text("{}")
    (tmp_path / "step-000002" / "sharded").mkdir()
    (tmp_path / "step-000002" / "sharded" / ".metadata").write_bytes(b"\x80\x04crafted")
    err = run_error(["consolidate", str(tmp_path / "step-000002"), "-o", str(tmp_path / "o")], capsys)
    assert ".metadata" in err or "sharded" in err  # the allow-list reader refuses a crafted index, by name


# ---- --help shows what the built-in model really uses ---------------------------------------------------
@pytest.mark.parametrize(("command", "section"), [("generate", "text"), ("chat", "text"), ("understand", "text"),
                                                   ("t2i", "image"), ("inpaint", "image")])
def test_help_defaults_are_the_builtin_models(command, section, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    settings = json.loads((BUILTIN / PIPELINE_FILE).read_text())
    options = text.split(f"{section} sampling:", 1)[1]
    for name, value in settings[section].items():
        flag = "--" + name.replace("_", "-")
        assert flag in options
        after = options.split(flag, 1)[1]
        shown = after.split("(default: ", 1)[1].split(")", 1)[0]
        assert shown == str(value), (flag, shown, value)
    assert f"(default: the model's {PIPELINE_FILE}; {DEFAULT_MODEL}: {settings['max_text_len']})" in text


def test_readme_inpaint_example_runs_on_the_builtin_model(tmp_path, monkeypatch, capsys):
    readme = (REPO / "README.md").read_text()
    lines = [line.split("#")[0] for line in readme.splitlines() if line.startswith(("mmada t2i", "mmada inpaint"))]
    assert len(lines) == 2
    monkeypatch.chdir(tmp_path)
    import shlex
    for line in lines:
        argv = shlex.split(line)[1:]
        assert main([*argv, *FAST_IMAGE]) == 0
    assert Image.open(tmp_path / "edited.png").size == (32, 32)


# ---- the model card ------------------------------------------------------------------------------------
def test_shipped_model_card_has_no_machine_path_and_the_real_architecture():
    card = (BUILTIN / "README.md").read_text()
    assert "/work/" not in card and "/home/" not in card and "/tmp/" not in card
    config = json.loads((BUILTIN / "config.json").read_text())
    block = card.split("```json", 1)[1].split("```", 1)[0]
    assert json.loads(block) == {k: config[k] for k in json.loads(block)}
    assert json.loads(block)["n_layers"] == config["n_layers"] and json.loads(block)["d_model"] == config["d_model"]


def test_model_card_writer_names_no_absolute_path():
    from dataclasses import dataclass
    from types import SimpleNamespace

    from mmada.recipe import model_card

    @dataclass
    class Model:
        init: str | None
        overrides: dict

    config = SimpleNamespace(model=Model("/some/machine/runs/r4/pretrain", {}))
    arch = json.loads((BUILTIN / "config.json").read_text())
    card = model_card(config, {}, {"total": 1.0}, arch)
    assert "/some/machine" not in card and "`pretrain` stage" in card
    assert f'"d_model": {arch["d_model"]}' in card and f'"n_layers": {arch["n_layers"]}' in card


# ---- data: streaming jsonl, one bad record skips one record --------------------------------------------
def test_jsonl_with_one_bad_byte_keeps_the_other_40_records(tmp_path, caplog):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"document {i}"}).encode() for i in range(40)]
    lines.insert(17, b'{"text": "caf\xe9"}')  # latin-1, not UTF-8: line 18
    path.write_bytes(b"\n".join(lines) + b"\n")
    spec = SourceSpec("jsonl", path=(str(path),), shuffle=False)
    skips = SkipCounter()
    stream = RecordStream("s", spec, [str(path)], seed=0, rank=0, world_size=1, skips=skips)
    it = iter(stream)
    with caplog.at_level(logging.WARNING):
        records = [next(it) for _ in range(40)]
    assert [r.text for r in records] == [f"document {i}" for i in range(40)]
    assert skips.counts == {"bad_utf8": 1} and skips.first == {"bad_utf8": f"{path}:18"}
    assert f"first at {path}:18" in caplog.text and "byte 0xe9" in caplog.text
    assert skips.summary() == f"bad_utf8: 1 (first at {path}:18)"


def test_jsonl_bad_json_line_and_chat_skip_only_that_record(tmp_path):
    path = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path.write_text("\n".join([json.dumps(good), "{broken", "", json.dumps(good)]) + "\n")
    skips = SkipCounter()
    spec = SourceSpec("jsonl_chat", path=(str(path),), shuffle=True)
    it = iter(RecordStream("c", spec, [str(path)], seed=3, rank=0, world_size=1, skips=skips))
    assert [next(it).messages[-1]["content"] for _ in range(2)] == ["hello", "hello"]
    assert skips.counts == {"bad_json": 1} and skips.first == {"bad_json": f"{path}:2"}


def test_jsonl_is_streamed_not_read_whole(tmp_path):
    import tracemalloc

    path = tmp_path / "big.jsonl"
    row = (json.dumps({"text": "x" * 200}) + "\n").encode()
    path.write_bytes(row * 40_000)  # 8 MB
    spec = SourceSpec("jsonl", path=(str(path),), shuffle=True)
    tracemalloc.start()
    it = iter(RecordStream("b", spec, [str(path)], seed=0, rank=0, world_size=1, skips=SkipCounter()))
    for _ in range(100):
        next(it)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3_000_000, peak  # the 8 MB file is never held; the line index is 16 bytes a line


def test_csv_row_with_a_bad_byte_skips_that_row_only(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path = tmp_path / "cot.csv"
    path.write_bytes(b"image,question,solution\na.png,what?,fine\na.png,caf\xe9?,bad\na.png,again?,fine\n")
    skips = SkipCounter()
    spec = SourceSpec("csv", path=(str(path),), shuffle=False, image_root=str(tmp_path))
    it = iter(RecordStream("c", spec, [str(path)], seed=0, rank=0, world_size=1, skips=skips))
    assert [next(it).question for _ in range(2)] == ["what?", "again?"]
    assert skips.counts == {"bad_utf8": 1}


# ---- install script ----------------------------------------------------------------------------------------
FAKE_PYTHON = textwrap.dedent("""\
    #!/usr/bin/env bash
    # a python without torch: pip calls are logged; a dry run reports $REPORT_NAMES
    case "$*" in *"import torch"*) exit 1;; esac
    if [[ "$*" == *"--dry-run"* ]]; then
        args=("$@"); for i in "${!args[@]}"; do [[ "${args[$i]}" == --report ]] && out="${args[$((i+1))]}"; done
        REAL_PYTHON_ARGS= "$REAL_PYTHON" -c 'import json, os, sys
    names = os.environ["REPORT_NAMES"].split(",")
    json.dump({"install": [{"metadata": {"name": n}} for n in names]}, open(sys.argv[1], "w"))' "$out"
        exit 0
    fi
    if [[ "$1 $2" == "-m pip" ]]; then echo "pip ${*:3}" >> "$PIP_LOG"; exit 0; fi
    exec "$REAL_PYTHON" "$@"
""")


@pytest.mark.parametrize(("names", "gpu", "expected"), [
    ("torch,nvidia-cublas-cu12,sympy", False, "pip install --quiet --index-url https://download.pytorch.org/whl/cpu "
                                              "torch==2.13.0"),
    ("torch,nvidia-cublas-cu12,sympy", True, "pip install --quiet torch==2.13.0"),
    ("torch,sympy", False, "pip install --quiet torch==2.13.0"),
])
def test_install_script_picks_the_torch_build(names, gpu, expected, tmp_path):
    import sys

    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if gpu:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    log = tmp_path / "pip.log"
    env = {**os.environ, "PYTHON": str(python), "REAL_PYTHON": sys.executable, "REPORT_NAMES": names,
           "PIP_LOG": str(log), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    env.pop("MMADA_TORCH_INDEX", None)
    if not gpu and Path("/dev/nvidia0").exists():
        pytest.skip("this machine has an NVIDIA device")
    subprocess.run(["bash", str(REPO / "scripts" / "install.sh")], env=env, check=True, capture_output=True)
    assert log.read_text().splitlines() == [expected, 'pip install --quiet -e .[dev]']


def test_install_script_keeps_an_installed_torch(tmp_path):
    import sys

    python = tmp_path / "python"
    python.write_text(f'#!/usr/bin/env bash\nif [[ "$1 $2" == "-m pip" ]]; then echo "pip ${{*:3}}" >> {tmp_path}/log; '
                      f'exit 0; fi\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    result = subprocess.run(["bash", str(REPO / "scripts" / "install.sh")], env={**os.environ, "PYTHON": str(python)},
                            check=True, capture_output=True, text=True)
    assert "keeping the installed torch" in result.stdout
    assert (tmp_path / "log").read_text().splitlines() == ['pip install --quiet -e .[dev]']
