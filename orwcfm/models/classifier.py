"""Image classifiers for the digits tasks: a small CNN (the reward model and the feature extractor for Fréchet
distances) and an MLP on the flattened image (the held-out "gold" judge: another family, other blind spots).

Images are in [-1, 1] with -1 the background, shape (B, in_channels, image_size, image_size); both work for
8x8 digits and 28x28 MNIST. No torchvision: augmentation (random +-1 pixel shifts) is written out below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKGROUND = -1.0  # pixel value of empty canvas: shifted-in borders use it, not 0 (which is mid-grey)


class DigitsClassifier(nn.Module):
    """conv-conv-pool-conv-pool-linear CNN: (B, C, S, S) -> logits (B, num_classes).

    ``features(x)`` returns the penultimate activations, shape (B, 4 * width) (128 by default). Dropout
    sits only between the features and the last layer, so features are deterministic in either mode.

    >>> DigitsClassifier()(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8, width: int = 32, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"DigitsClassifier image_size must be divisible by 4 (two 2x poolings), got {image_size}")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.feature_dim = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (image_size // 4) ** 2, self.feature_dim), nn.ReLU(),
        )  # fmt: skip
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer activations: (B, C, S, S) -> (B, 4 * width)."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"DigitsClassifier expects x of shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.dropout(self.features(x)))


class MLPClassifier(nn.Module):
    """An MLP on the flattened image: (B, C, S, S) -> logits (B, num_classes), dropout after every hidden layer.

    No convolution, no pooling, no weight sharing: it reads pixels where they are, so its mistakes differ from
    the CNN's. That is why it is the gold judge: a sample that fools the reward CNN need not fool it.
    ``features(x)`` returns the last hidden layer's activations (B, hidden) (dropout is applied between hidden
    layers, so in train mode they are random; use eval mode).

    >>> MLPClassifier()(torch.zeros(2, 1, 8, 8)).shape, MLPClassifier(image_size=28)(torch.zeros(2, 1, 28, 28)).shape
    (torch.Size([2, 10]), torch.Size([2, 10]))
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8, hidden: int = 256,
                 depth: int = 2, dropout: float = 0.2) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"MLPClassifier needs at least one hidden layer, got depth={depth}")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.feature_dim = hidden
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for i in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()] + ([nn.Dropout(dropout)] if i < depth - 1 else [])
            width = hidden
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Last hidden layer's activations: (B, C, S, S) -> (B, hidden)."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"MLPClassifier expects x of shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.dropout(self.features(x)))


# The classifier families the asset cache can rebuild from a recorded ``{"kind": ..., "architecture": {...}}``.
CLASSIFIER_KINDS: dict[str, type[nn.Module]] = {"cnn": DigitsClassifier, "mlp": MLPClassifier}


def random_shift(x: Tensor, max_shift: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image of ``x`` (B, C, H, W) by its own random offset in [-max_shift, max_shift]^2.

    Pixels shifted in from outside are ``BACKGROUND``.

    >>> x = torch.zeros(4, 1, 3, 3)
    >>> y = random_shift(x, generator=torch.Generator().manual_seed(0))
    >>> y.shape, bool(((y == 0) | (y == BACKGROUND)).all())
    (torch.Size([4, 1, 3, 3]), True)
    """
    b, _, h, w = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m), value=BACKGROUND)
    dy, dx = torch.randint(0, 2 * m + 1, (2, b), generator=generator).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B,H,W,C) -> (B,C,H,W)


@dataclass(frozen=True)
class ClassifierTrainResult:
    """Outcome of :func:`train_classifier`.

    final_loss: mean cross-entropy over the last epoch (on augmented batches, dropout on).
    train_accuracy: accuracy on the un-augmented training set in eval mode after training.
    """

    final_loss: float
    train_accuracy: float


def train_classifier(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    *,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    augment: bool = True,
    progress: bool = False,
) -> ClassifierTrainResult:
    """Train ``model`` in place with Adam on images ``x`` (N, C, H, W) and int labels (N,); ends in eval mode.

    ``seed`` fixes shuffling, shifts and dropout without touching the caller's global RNG state.
    ``augment`` shifts each image by up to one pixel, so the classifier tolerates the slightly
    off-centre digits a generative model produces.
    """
    if x.shape[0] != labels.shape[0] or labels.dim() != 1:
        raise ValueError(f"x (N, C, H, W) and labels (N,) disagree: shapes {tuple(x.shape)} and {tuple(labels.shape)}")
    device = next(model.parameters()).device
    x, labels = x.to(device), labels.to(device=device, dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    epoch_iter = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc="classifier")
    final_loss = float("nan")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout masks
        model.train()
        for _ in epoch_iter:
            order = torch.randperm(x.shape[0], generator=gen).to(device)
            total, count = 0.0, 0
            for start in range(0, x.shape[0], batch_size):
                idx = order[start : start + batch_size]
                xb = random_shift(x[idx], generator=gen) if augment else x[idx]
                loss = F.cross_entropy(model(xb), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, count = total + loss.item() * len(idx), count + len(idx)
            final_loss = total / max(count, 1)
    model.eval()
    return ClassifierTrainResult(final_loss=final_loss, train_accuracy=accuracy(model, x, labels))


def predict_proba(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """Class probabilities (N, num_classes) for images ``x`` (N, C, H, W), in eval mode, without gradients.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            chunks = [model(x[i : i + batch_size].to(device)).softmax(dim=-1) for i in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, getattr(model, "num_classes", 0))


def accuracy(model: nn.Module, x: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    """Fraction of images in ``x`` (N, C, H, W) whose arg-max class equals ``labels`` (N,)."""
    pred = predict_proba(model, x, batch_size).argmax(dim=-1)
    return (pred == labels.to(pred.device)).float().mean().item()
