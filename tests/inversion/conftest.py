"""A small face model trained in a few seconds on synthetic faces, shared by the inversion tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cleanface.data.folder import read_folder
from cleanface.data.images import decode_image, to_tensor_batch
from cleanface.data.synthetic import make_synthetic

SIZE = 32
DIM = 64
K = 2


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout))


class TinyNet(nn.Module):
    """Five conv-BN-PReLU blocks and a linear embedding: the stand-in when the backbone registry is absent."""

    def __init__(self, dim: int = DIM, size: int = SIZE) -> None:
        super().__init__()
        self.features = nn.Sequential(_block(3, 16, 1), _block(16, 32, 2), _block(32, 32, 1), _block(32, 64, 2), _block(64, 64, 2))
        self.fc = nn.Linear(64 * (size // 8) ** 2, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.features(x).flatten(1)))


def make_backbone() -> nn.Module:
    """The project's ``compact`` backbone at 32x32 / 64-d when it exists, else :class:`TinyNet`."""
    try:
        from cleanface.models import create_backbone
    except ImportError:
        return TinyNet()
    return create_backbone("compact", embedding_size=DIM, input_size=SIZE)


class SubcenterHead(nn.Module):
    """Cosine softmax over C x K normalised sub-centers, max-pooled over K (no margin)."""

    def __init__(self, classes: int, k: int = K, dim: int = DIM, scale: float = 16.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes * k, dim) * 0.1)
        self.classes, self.k, self.scale = classes, k, scale

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(emb) @ F.normalize(self.weight).T
        return self.scale * cos.view(-1, self.classes, self.k).amax(dim=2)

    def class_centers(self) -> torch.Tensor:
        return F.normalize(self.weight.detach(), dim=1).view(self.classes, self.k, -1)


@dataclass
class Trained:
    backbone: nn.Module
    head: SubcenterHead
    images: np.ndarray  # (N, SIZE, SIZE, 3) uint8 training images
    labels: np.ndarray  # (N,)
    names: list[str]
    folder: Path  # the training images as a dataset folder


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    folder = make_synthetic(tmp_path_factory.mktemp("inv") / "faces", identities=6, per_identity=24, size=SIZE, seed=0, silent=True)
    index = read_folder(folder)
    images = np.stack([decode_image(index.read_bytes(i), size=SIZE) for i in range(len(index))])
    labels = torch.as_tensor(index.labels)
    torch.manual_seed(0)
    backbone, head = make_backbone(), SubcenterHead(len(index.names))
    opt = torch.optim.Adam(list(backbone.parameters()) + list(head.parameters()), lr=3e-3)
    x = to_tensor_batch(images)
    gen = torch.Generator().manual_seed(0)
    backbone.train()
    for _ in range(100):
        b = torch.randint(0, len(x), (32,), generator=gen)
        xb = x[b].clone()
        flip = torch.rand(32, generator=gen) < 0.5
        xb[flip] = xb[flip].flip(3)
        xb = torch.roll(xb, tuple(torch.randint(-2, 3, (2,), generator=gen).tolist()), (2, 3))
        loss = F.cross_entropy(head(backbone(xb)), labels[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    backbone.eval()
    return Trained(backbone, head, images, index.labels.copy(), list(index.names), folder)


@dataclass
class FakeRun:
    """What ``load_run`` returns, for a run that was never written to disk."""

    config: dict
    backbone: nn.Module
    head: nn.Module
    names: list[str]


@pytest.fixture
def fake_run(trained, monkeypatch, tmp_path) -> Path:
    """A run directory path whose loading yields the trained test model."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = FakeRun({"input_size": SIZE, "backbone": "test", "embedding_size": DIM, "data": str(trained.folder)}, trained.backbone, trained.head,
                  trained.names)
    monkeypatch.setattr("cleanface.inversion.identities._load_run", lambda path, device: run)
    return run_dir
