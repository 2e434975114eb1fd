import numpy as np
import pytest
import torch
from PIL import Image

from tvprompt import ImageError
from tvprompt.imageio import load_image, save_png, tensor_to_pil


def make_mode_images(root):
    """One file per PIL mode the loader must handle; returns {name: expected RGB uint8 array or None}."""
    root.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "rgb.png")
    Image.fromarray(rgb).convert("L").save(root / "grey.png")
    Image.fromarray(rgb).convert("1").save(root / "bits.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.gif")
    rgba = np.concatenate([rgb, np.full((12, 16, 1), 0, np.uint8)], axis=2)
    rgba[:6, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    Image.fromarray(rgb).convert("LA").save(root / "greyalpha.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray((np.arange(12 * 16).reshape(12, 16) * 300).astype(np.uint16)).save(root / "deep.png")
    Image.fromarray(rgb).save(root / "photo.webp", lossless=True)
    Image.fromarray(rgb).save(root / "scan.tiff")
    return rgb


def test_rgb_round_trip_exact(tmp_path):
    rgb = make_mode_images(tmp_path)
    x = load_image(tmp_path / "rgb.png")
    assert x.shape == (3, 12, 16) and x.dtype == torch.float32
    assert torch.equal((x * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(rgb))


@pytest.mark.parametrize(
    "name", ["grey.png", "bits.png", "palette.gif", "alpha.png", "greyalpha.png", "cmyk.jpg", "deep.png",
             "photo.webp", "scan.tiff"]
)
def test_every_mode_becomes_rgb_float(tmp_path, name):
    make_mode_images(tmp_path)
    x = load_image(tmp_path / name)
    assert x.shape == (3, 12, 16)
    assert x.min() >= 0 and x.max() <= 1


def test_alpha_is_composited_on_white(tmp_path):
    make_mode_images(tmp_path)
    x = load_image(tmp_path / "alpha.png")
    assert torch.equal(x[:, 6:], torch.ones(3, 6, 16))  # transparent rows -> white


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    make_mode_images(tmp_path)
    x = load_image(tmp_path / "deep.png")
    assert 0.3 < x.max() <= 1.0 and x[0, 0, 0] == 0  # 16-bit max ~ 57300/65535 ~ 0.87


def test_grey_is_replicated(tmp_path):
    make_mode_images(tmp_path)
    x = load_image(tmp_path / "grey.png")
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (20, 10), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 5, 10))  # blue stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    x = load_image(tmp_path / "rot.jpg")
    assert x.shape == (3, 20, 10)
    assert x[2, 0, 5] > 0.8 and x[0, 0, 5] < 0.2  # the left stripe is now on top


@pytest.mark.parametrize(
    "content, message",
    [
        (b"hello, not an image", "not an image file"),
        (None, "corrupt or truncated"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is None:  # a truncated PNG
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert str(path) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_pixel_limit(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_image(tmp_path / "big.png", max_pixels=5000)


def test_save_png_atomic_and_exact(tmp_path):
    x = torch.rand(3, 9, 7)
    save_png(x, tmp_path / "out" / "x.png")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.png"]
    back = load_image(tmp_path / "out" / "x.png")
    assert torch.equal(back, (x * 255).round() / 255)
    assert tensor_to_pil(x).size == (7, 9)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n/Helvetica findfont 12 scalefont setfont\nshowpage\n%%EOF\n"


def test_only_accepted_formats_are_decoded(tmp_path, monkeypatch):
    """An EPS (Pillow would hand it to Ghostscript) and other formats outside FORMATS are refused unopened."""
    from PIL import EpsImagePlugin

    def no_ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript must never be run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    (tmp_path / "doc.eps").write_bytes(EPS)
    Image.new("RGB", (8, 8)).save(tmp_path / "pic.tga")
    Image.new("RGB", (8, 8)).save(tmp_path / "pic.im")
    for name in ("doc.eps", "pic.tga", "pic.im"):
        with pytest.raises(ImageError, match="not an image file in an accepted format") as err:
            load_image(tmp_path / name)
        assert "PNG, JPEG" in str(err.value)
    from tvprompt.imageio import FORMATS

    for fmt, suffix in [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("BMP", "bmp"), ("GIF", "gif"),
                        ("TIFF", "tif"), ("PPM", "ppm"), ("ICO", "ico")]:
        assert fmt in FORMATS
        Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / f"ok.{suffix}", format=fmt)
        assert load_image(tmp_path / f"ok.{suffix}").shape == (3, 16, 16)
