"""Pre-activation WideResNet as in the TRADES / RobustBench code, with its parameter names,
so that published checkpoints load without renaming."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x):
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        # The shortcut of a width-changing block sees the pre-activated input, as in TRADES.
        return out + (x if self.equal_in_out else self.convShortcut(pre))


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
            for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.feature_dim = widths[3]
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x, return_features: bool = False):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        features = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        logits = self.fc(features)
        return (logits, features) if return_features else logits
