"""The `mmada` command line end to end on the fixture checkpoint (in-process, so it stays fast)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from mmada.cli import main


@pytest.fixture(scope="module")
def flags(reference_dir):
    return ["--model", str(reference_dir / "mmada_a"), "--image-tokenizer", str(reference_dir / "magvitv2_tiny"),
            "--max-text-len", "16", "--seed", "0", "-q"]


TEXT = ["--gen-length", "8", "--steps", "4", "--block-length", "4"]


def test_info(reference_dir, capsys):
    assert main(["info", str(reference_dir / "mmada_a")]) == 0
    out = capsys.readouterr().out
    assert "vocab_size     512" in out and "3 safetensors file(s), BF16" in out


def test_generate_and_thinking(flags, capsys):
    assert main(["generate", "What is two plus three?", *flags, *TEXT, "--temperature", "0"]) == 0
    assert main(["generate", "What is two plus three?", "--thinking", *flags, *TEXT]) == 0
    assert capsys.readouterr().err == ""


def test_chat_runs_several_turns(flags, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nand again\n\n"))
    assert main(["chat", *flags, *TEXT]) == 0
    assert capsys.readouterr().out.count("mmada> ") == 2


def test_t2i_writes_png_and_gif_then_understand_and_inpaint(flags, tmp_path, capsys):
    png, gif = tmp_path / "out.png", tmp_path / "steps.gif"
    assert main(["t2i", "a red cube", *flags, "-o", str(png), "--gif", str(gif), "--timesteps", "4"]) == 0
    assert Image.open(png).size == (64, 64)
    animation = Image.open(gif)
    assert animation.n_frames >= 4
    assert main(["understand", str(png), "What is in the image?", *flags, *TEXT]) == 0
    out = tmp_path / "inpainted.png"
    assert main(["inpaint", str(png), "a blue cube", "--box", "0", "0", "32", "64", *flags, "-o", str(out),
                 "--timesteps", "3"]) == 0
    assert Image.open(out).size == (64, 64)
    assert f"wrote {png}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "x", *TEXT[:2], "--steps", "4", "--block-length", "3"], "`--gen-length` (8) must be divisible"),
        (["t2i", "x", "--timesteps", "0"], "`--timesteps` (0) must be >= 1"),
        (["t2i", "x", "--guidance-scale", "-2"], "`--guidance-scale`"),
        (["generate", "x", "--remasking", "sometimes"], "remasking"),
        (["inpaint", "IMG", "x"], "exactly one of --box"),
        (["understand", "/no/such.png", "q"], "no/such.png"),
    ],
)
def test_bad_flags_give_clear_errors(flags, argv, message, capsys, tmp_path):
    argv = [str(tmp_path / "img.png") if a == "IMG" else a for a in argv]
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_model_and_unknown_flag(capsys):
    assert main(["generate", "x", "--model", "/no/such/model", "-q"]) == 2
    assert "no such folder: /no/such/model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "x", "--gen-lenght", "8"])
    assert exit_info.value.code == 2
