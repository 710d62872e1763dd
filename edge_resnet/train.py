"""Train a ResNet on the built-in real data (scikit-learn's digits), so that accuracy and drift
claims are made on a model that has really learned something, not on random weights.

Used by ``edge-resnet demo`` and by the tests. The result is cached by its recipe (model, input
size, epochs, seed, torch version) so a second run reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_resnet.data import PreprocessSpec, open_dataset

log = logging.getLogger(__name__)




@dataclass(frozen=True)
class DigitsRecipe:
    model: str = "resnet18"
    input_size: int = 32
    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.05
    seed: int = 0
    version: int = 2  # bump when the training code changes, so cached models are not reused

    def spec(self) -> PreprocessSpec:
        """Digits are 8x8: upsample to the input size, no crop margin; ImageNet mean/std."""
        return PreprocessSpec(input_size=self.input_size, resize=self.input_size)

    def key(self) -> str:
        import torch

        blob = json.dumps({**asdict(self), "torch": torch.__version__.split("+")[0]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class TrainedModel:
    checkpoint: Path
    recipe: DigitsRecipe
    test_accuracy: float


def default_cache_dir() -> Path:
    root = os.environ.get("EDGE_RESNET_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "edge-resnet")
    return Path(root)


def _arrays(split: str, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    ds = open_dataset(f"digits:{split}", spec)
    xs, ys = [], []
    for b in ds.batches(256):
        xs.append(b.x)
        ys.append(b.y)
    return np.concatenate(xs), np.concatenate(ys)


def train_digits(recipe: DigitsRecipe = DigitsRecipe(), cache_dir: Path | None = None, progress: bool = True) -> TrainedModel:
    """Train (or reuse from the cache) ``recipe.model`` on digits:train; report digits:test accuracy."""
    import torch
    from torch import nn
    from tqdm import tqdm

    from edge_resnet.models import build_model

    cache = (cache_dir or default_cache_dir()) / f"digits-{recipe.model}-{recipe.key()}"
    ckpt, meta = cache / "model.pth", cache / "meta.json"
    if ckpt.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        log.info("reusing the digits-trained %s from %s", recipe.model, cache)
        return TrainedModel(ckpt, recipe, info["test_accuracy"])

    spec = recipe.spec()
    x_train, y_train = _arrays("train", spec)
    x_test, y_test = _arrays("test", spec)
    torch.manual_seed(recipe.seed)
    gen = np.random.default_rng(recipe.seed)
    model = build_model(recipe.model, num_classes=10)
    _zero_init_residual(model)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps_per_epoch = int(np.ceil(len(x_train) / recipe.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.int64))
    bar = tqdm(total=recipe.epochs * steps_per_epoch, desc=f"training {recipe.model} on digits", disable=not progress, leave=False)
    for _epoch in range(recipe.epochs):
        model.train()
        order = torch.from_numpy(gen.permutation(len(xt)))
        for i in range(0, len(order), recipe.batch_size):
            idx = order[i: i + recipe.batch_size]
            xb = _shift(xt[idx], gen)
            loss = loss_fn(model(xb), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    acc = evaluate(model, x_test, y_test)
    log.info("trained %s on digits:train: %.2f%% top-1 on digits:test", recipe.model, 100 * acc)
    _save_atomically(cache, model.state_dict(), {"test_accuracy": acc, "recipe": asdict(recipe)})
    return TrainedModel(ckpt, recipe, acc)


def _zero_init_residual(model) -> None:
    """Zero the last BN gamma of each residual block so every block starts as the identity
    (Goyal et al. 2017; torchvision's zero_init_residual): deep ResNets trained from scratch on a
    small set are much more stable with it."""
    from torch import nn

    from edge_resnet.models.resnet import BasicBlock, Bottleneck

    for block in model.modules():
        if isinstance(block, Bottleneck):
            nn.init.zeros_(block.bn3.weight)
        elif isinstance(block, BasicBlock):
            nn.init.zeros_(block.bn2.weight)


def _shift(x, gen: np.random.Generator):
    """Random translation by up to 1/8 of the image: cheap augmentation that helps generalization."""
    import torch

    pad = max(1, x.shape[-1] // 8)
    dx, dy = (int(v) for v in gen.integers(-pad, pad + 1, size=2))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model(torch.from_numpy(x[i: i + batch_size])).argmax(1).numpy() == y[i: i + batch_size]).sum())
    return correct / len(x)


def _save_atomically(folder: Path, state_dict: dict, meta: dict) -> None:
    import torch

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    torch.save(state_dict, tmp / "model.pth")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first: keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
