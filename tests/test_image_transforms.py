"""Image loading and preprocessing: mode conversions, torchvision-equivalent resize/crop, refusals."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mmada.image_tokenizer import image_to_tensor, load_image, tensor_to_image


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _ramp(width: int, height: int) -> Image.Image:
    """RGB image whose pixels encode their position, so crops and flips are detectable."""
    x = np.arange(width)[None, :].repeat(height, 0)
    y = np.arange(height)[:, None].repeat(width, 1)
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def test_grayscale_becomes_rgb():
    gray = Image.fromarray(np.array([[0, 128], [200, 255]], dtype=np.uint8))
    rgb = np.asarray(load_image(gray))
    assert rgb.shape == (2, 2, 3) and (rgb == np.array([[0, 128], [200, 255]])[..., None]).all()


def test_rgba_is_composited_on_white():
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent -> white
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red stays red
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black -> mid gray
    out = np.asarray(load_image(Image.fromarray(rgba)))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [255, 0, 0]
    assert all(abs(int(v) - 127) <= 1 for v in out[0, 2])


def test_palette_images():
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="L").convert("P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    out = np.asarray(load_image(palette))
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [0, 0, 255]
    # A palette with a transparent index (GIF/PNG tRNS) is composited on white too.
    palette.info["transparency"] = 1
    out = np.asarray(load_image(Image.open(io.BytesIO(_png_bytes(palette)))))
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit_grayscale_is_rescaled_not_clipped(mode):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values) if mode == "I;16" else Image.fromarray(values.astype(np.int32))
    assert image.mode == mode
    out = np.asarray(load_image(image))[..., 0]
    assert out.tolist() == [[0, 1, 128, 255]]


def test_sixteen_bit_png_file(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(path)
    assert np.asarray(load_image(path)).min() == 255


def test_arrays_of_each_dtype():
    assert np.asarray(load_image(np.full((2, 2), 65535, dtype=np.uint16))).min() == 255
    assert np.asarray(load_image(np.ones((2, 2, 1), dtype=bool))).min() == 255
    assert np.asarray(load_image(np.full((2, 2, 3), 0.5))).tolist()[0][0] == [128, 128, 128]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(np.full((2, 2, 3), 2.0))
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        load_image(np.zeros((2, 2), dtype=np.int8))


def test_path_and_bytes_inputs(tmp_path):
    image = _ramp(5, 3)
    path = tmp_path / "ramp.png"
    image.save(path)
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(image))
    assert np.array_equal(np.asarray(load_image(str(path))), np.asarray(image))
    assert np.array_equal(np.asarray(load_image(_png_bytes(image))), np.asarray(image))


def test_corrupt_and_non_image_files_are_refused(tmp_path):
    truncated = tmp_path / "broken.png"
    data = _png_bytes(_ramp(64, 64))
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"broken\.png.*not a readable image"):
        load_image(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("definitely not pixels")
    with pytest.raises(ValueError, match=r"notes\.txt.*not a readable image"):
        load_image(text)
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(b"\x89PNG garbage")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="`source`"):
        load_image(12345)


def test_crop_matches_torchvision_rule():
    # 100x60 -> short side 32: long side int(32 * 100 / 60) = 53; left offset round(10.5) = 10
    # (round half to even, as torchvision's CenterCrop).
    image = _ramp(100, 60)
    resized = np.asarray(image.resize((53, 32), Image.Resampling.BICUBIC))
    expected = torch.from_numpy(resized[:, 10:42].copy()).permute(2, 0, 1).float() / 255 * 2 - 1
    out = image_to_tensor(image, 32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_crop_of_portrait_image():
    image = _ramp(30, 90)  # tall: width -> 16, height int(16 * 90 / 30) = 48, top offset 16
    resized = np.asarray(image.resize((16, 48), Image.Resampling.BICUBIC))
    out = image_to_tensor(image, 16)
    expected = torch.from_numpy(resized[16:32].copy()).permute(2, 0, 1).float() / 255 * 2 - 1
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_squash_keeps_the_whole_image():
    image = _ramp(100, 60)
    out = image_to_tensor(image, 32, mode="squash")
    resized = np.asarray(image.resize((32, 32), Image.Resampling.BICUBIC))
    torch.testing.assert_close(out, torch.from_numpy(resized.copy()).permute(2, 0, 1).float() / 255 * 2 - 1)


def test_exact_size_is_only_normalised():
    image = Image.fromarray(np.array([[[0, 255, 51]] * 2] * 2, dtype=np.uint8))
    out = image_to_tensor(image, 2)
    assert out[:, 0, 0].tolist() == pytest.approx([-1.0, 1.0, -0.6])
    assert torch.equal(image_to_tensor(image, 2, mode="squash"), out)


def test_non_rgb_inputs_go_through_load_image():
    gray = Image.fromarray(np.full((8, 8), 255, dtype=np.uint8))
    assert torch.equal(image_to_tensor(gray, 8), torch.ones(3, 8, 8))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="`mode`"):
        image_to_tensor(_ramp(8, 8), 8, mode="pad")
    with pytest.raises(ValueError, match="`resolution`"):
        image_to_tensor(_ramp(8, 8), 0)


def test_tensor_to_image_round_trip_and_clamp():
    image = _ramp(16, 16)
    back = tensor_to_image(image_to_tensor(image, 16))
    assert isinstance(back, Image.Image) and np.array_equal(np.asarray(back), np.asarray(image))
    batch = torch.stack([torch.full((3, 2, 2), 5.0), torch.full((3, 2, 2), -5.0)])
    images = tensor_to_image(batch)
    assert isinstance(images, list) and len(images) == 2
    assert np.asarray(images[0]).min() == 255 and np.asarray(images[1]).max() == 0
    assert np.asarray(tensor_to_image(torch.zeros(3, 1, 1)))[0, 0].tolist() == [128, 128, 128]


def test_tensor_to_image_refuses_bad_input():
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        tensor_to_image(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="NaN"):
        tensor_to_image(torch.full((3, 2, 2), float("nan")))
