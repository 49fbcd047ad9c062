"""Model shapes, published parameter counts, and checkpoint loading in every public format."""
import pytest
import torch

from runtime.checkpoints import load_weights
from runtime.errors import UserError
from models import build_model


@pytest.mark.parametrize("name,size,classes", [
    ("resnet18", 32, 10), ("resnet18", 64, 200), ("mobilenetV2", 32, 100), ("wideresnet10_1", 32, 10),
    ("wideresnet16_2", 64, 200), ("presnet18", 64, 200)])
def test_logits_and_features_shapes(name, size, classes):
    model = build_model(name, classes).eval()
    with torch.no_grad():
        logits, features = model(torch.rand(2, 3, size, size), return_features=True)
    assert logits.shape == (2, classes)
    assert features.shape == (2, model.feature_dim)


@pytest.mark.parametrize("name,count", [
    ("resnet18", 11_173_962),          # kuangliu/pytorch-cifar ResNet-18, the figure every paper quotes (11.2M)
    ("mobilenetV2", 2_296_922),        # CIFAR MobileNetV2 (2.30M)
    ("wideresnet34_10", 46_160_474),   # RobustBench WRN-34-10 (46.16M)
])
def test_parameter_counts_match_published_figures(name, count):
    assert sum(p.numel() for p in build_model(name, 10).parameters()) == count


def test_presnet18_feeds_2048_features_from_a_2x2_map():
    model = build_model("presnet18", 200)
    assert model.linear.in_features == 2048
    assert not hasattr(model, "bn") and not hasattr(model, "bn1")  # no stem BN, no final BN


def test_wrn_keeps_the_trades_parameter_names():
    keys = set(build_model("wideresnet34_10", 10).state_dict())
    for key in ("conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight",
                "block3.layer.4.conv2.weight", "bn1.running_var", "fc.weight", "fc.bias"):
        assert key in keys


def trades_style_checkpoint(source):
    """A WRN state dict as the TRADES release ships it: with the unused sub_block1 group."""
    state = dict(source.state_dict())
    state.update({"sub_block1." + k[len("block1."):]: v.clone() for k, v in source.state_dict().items()
                  if k.startswith("block1.")})
    return state


@pytest.mark.parametrize("wrap", ["raw", "net", "state_dict", "model", "module", "model_module"])
@pytest.mark.parametrize("sub_block1", [False, True])
def test_wrn_checkpoint_formats_load(tmp_path, wrap, sub_block1):
    source = build_model("wideresnet10_2", 10)
    state = trades_style_checkpoint(source) if sub_block1 else source.state_dict()
    if wrap in ("module", "model_module"):
        prefix = "module." if wrap == "module" else "model.module."
        state = {prefix + k: v for k, v in state.items()}
    obj = state if wrap in ("raw", "module", "model_module") else {wrap: state, "epoch": 3}
    torch.save(obj, tmp_path / "ckpt.pt")
    target = load_weights(build_model("wideresnet10_2", 10), str(tmp_path / "ckpt.pt"))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target.eval()(x), source.eval()(x))


def test_mismatches_are_explained(tmp_path):
    torch.save(build_model("wideresnet10_1", 100).state_dict(), tmp_path / "c100.pt")
    with pytest.raises(UserError, match="100 classes but .* 10"):
        load_weights(build_model("wideresnet10_1", 10), str(tmp_path / "c100.pt"))
    torch.save(build_model("resnet18", 10).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(UserError, match="does not fit architecture .*missing .*unexpected"):
        load_weights(build_model("wideresnet10_1", 10), str(tmp_path / "r18.pt"), name="wideresnet10_1")
    torch.save(build_model("wideresnet10_2", 10).state_dict(), tmp_path / "wide2.pt")
    with pytest.raises(UserError, match="shapes differ"):
        load_weights(build_model("wideresnet10_3", 10), str(tmp_path / "wide2.pt"))


def test_unknown_model_names():
    for name in ("resnet19", "wideresnet33_10", "wideresnet34_0"):
        with pytest.raises(ValueError, match="unknown model"):
            build_model(name, 10)
