"""Images as cameras write them: every format decodes to the same RGB uint8, bad files are named."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flows.data.validation import DataValidationError, validate_line
from padim_plugin.datamodule import MVTecLayoutDataset
from padim_plugin.images import ImageDecodeError, decode_image

from ..synthetic import write_mvtec_folder

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, (24, 32), dtype=np.uint8)
RGB = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def saved(tmp_path: Path, name: str, image: Image.Image, **options: object) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_greyscale_is_scaled_by_its_range_not_clipped(tmp_path: Path, suffix: str) -> None:
    # a 12-bit camera in a 16-bit container: values 1000..4095, all far above 255
    wide = (1000 + GREY.astype(np.uint16) * 12).astype(np.uint16)
    path = saved(tmp_path, f"wide{suffix}", Image.fromarray(wide))
    decoded = decode_image(path)
    expected = np.rint((wide - wide.min()) * (255.0 / (wide.max() - wide.min()))).astype(np.uint8)
    assert decoded.shape == (24, 32, 3) and decoded.dtype == np.uint8
    assert (decoded == expected[..., None]).all()
    assert len(np.unique(decoded)) == len(np.unique(wide)), "no two grey levels collapse into one"


def test_lossless_formats_and_modes_decode_to_the_same_pixels(tmp_path: Path) -> None:
    rgb = Image.fromarray(RGB)
    grey = Image.fromarray(GREY)
    alpha = np.dstack([RGB, RNG.integers(0, 256, (24, 32), dtype=np.uint8)])
    palette = rgb.quantize(colors=16)
    cases = {
        saved(tmp_path, "rgb.png", rgb): RGB,
        saved(tmp_path, "rgb.bmp", rgb): RGB,
        saved(tmp_path, "rgb.tif", rgb): RGB,
        saved(tmp_path, "rgba.png", Image.fromarray(alpha)): RGB,  # alpha is dropped, colour kept
        saved(tmp_path, "grey.png", grey): np.repeat(GREY[..., None], 3, axis=-1),
        saved(tmp_path, "grey.tif", grey): np.repeat(GREY[..., None], 3, axis=-1),
        saved(tmp_path, "palette.png", palette): np.asarray(palette.convert("RGB")),
    }
    for path, expected in cases.items():
        assert (decode_image(path) == expected).all(), path.name


def test_jpeg_decodes_to_what_pillow_decodes(tmp_path: Path) -> None:
    path = saved(tmp_path, "photo.jpg", Image.fromarray(RGB), quality=95)
    assert (decode_image(path) == np.asarray(Image.open(path).convert("RGB"))).all()


def bad_files(folder: Path) -> dict[Path, str]:
    """One file of each kind that must be refused, with the words its error must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    encoded = io.BytesIO()
    Image.fromarray(RGB).save(encoded, format="PNG")
    frames = [Image.fromarray(RGB), Image.fromarray(255 - RGB)]
    (folder / "truncated.png").write_bytes(encoded.getvalue()[: len(encoded.getvalue()) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("inspector's notes, not an image")
    frames[0].save(folder / "animated.png", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "pages.tif", save_all=True, append_images=frames[1:])
    return {folder / "truncated.png": "does not decode", folder / "empty.png": "empty file",
            folder / "notes.png": "not an image", folder / "animated.png": "2 frames",
            folder / "pages.tif": "2 frames"}


def test_each_bad_file_kind_is_refused_naming_the_file(tmp_path: Path) -> None:
    for path, words in bad_files(tmp_path).items():
        with pytest.raises(ImageDecodeError, match=words) as error:
            decode_image(path)
        assert str(path) in str(error.value)


def test_validation_reports_every_bad_file_of_a_drop_at_once(tmp_path: Path) -> None:
    line = write_mvtec_folder(tmp_path / "line", 4, 2, 2, n_validation=1)
    bad = bad_files(line / "test" / "good")
    with pytest.raises(DataValidationError) as error:
        validate_line(line)
    assert len(error.value.problems) == len(bad)
    for path, words in bad.items():
        assert any(str(path) in p and words in p for p in error.value.problems), path.name


def test_the_training_dataset_sees_16_bit_images_stretched_not_clipped(tmp_path: Path) -> None:
    line = write_mvtec_folder(tmp_path / "line", 2, 1, 0)
    wide = (1000 + GREY.astype(np.uint16) * 12).astype(np.uint16)
    Image.fromarray(wide).save(line / "train" / "good" / "camera16.png")
    dataset = MVTecLayoutDataset(line, "train")
    index = list(dataset.samples.image_path).index(str(line / "train" / "good" / "camera16.png"))
    stretched = np.rint((wide - wide.min()) * (255.0 / (wide.max() - wide.min()))) / 255.0
    expected = torch.from_numpy(stretched).float().expand(3, -1, -1)
    assert torch.equal(dataset[index].image, expected)
