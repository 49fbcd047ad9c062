"""CIFAR ResNet-18 (3x3 stride-1 stem, no max-pool) and the pre-activation ResNet-18 of the DGAD Tiny ImageNet teacher."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def make_stage(block, in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
    """n blocks of `block`; only the first changes width and stride."""
    return nn.Sequential(*[block(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                           for i in range(n)])


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = make_stage(BasicBlock, 64, 64, num_blocks[0], 1)
        self.layer2 = make_stage(BasicBlock, 64, 128, num_blocks[1], 2)
        self.layer3 = make_stage(BasicBlock, 128, 256, num_blocks[2], 2)
        self.layer4 = make_stage(BasicBlock, 256, 512, num_blocks[3], 2)
        self.feature_dim = 512
        self.linear = nn.Linear(512, num_classes)


    def forward(self, x, return_features: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        features = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        logits = self.linear(features)
        return (logits, features) if return_features else logits


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18Tiny(nn.Module):
    """As the DGAD authors built it for 64x64 inputs: the stem has no BN, there is no
    final BN+ReLU, and avg_pool2d(4) on the 8x8 map leaves 2x2x512 = 2048 features."""

    def __init__(self, num_classes: int = 200):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.layer1 = make_stage(PreActBlock, 64, 64, 2, 1)
        self.layer2 = make_stage(PreActBlock, 64, 128, 2, 2)
        self.layer3 = make_stage(PreActBlock, 128, 256, 2, 2)
        self.layer4 = make_stage(PreActBlock, 256, 512, 2, 2)
        self.feature_dim = 2048
        self.linear = nn.Linear(2048, num_classes)


    def forward(self, x, return_features: bool = False):
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        features = torch.flatten(F.avg_pool2d(out, 4), 1)
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"presnet18 expects 64x64 inputs (got {tuple(x.shape[-2:])})")
        logits = self.linear(features)
        return (logits, features) if return_features else logits
