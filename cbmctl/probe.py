"""A standard linear probe: multinomial logistic regression on image embeddings, L2 strength chosen on
validation accuracy (full-batch L-BFGS, deterministic)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class LinearProbe:
    weight: np.ndarray  # K × D
    bias: np.ndarray    # K
    l2: float
    val_accuracy: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, np.float32) @ self.weight.T + self.bias

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
        return float((self.logits(features).argmax(1) == np.asarray(labels)).mean()) if len(labels) else 0.0


def _fit(x, y, num_classes: int, l2: float, steps: int = 200):
    import torch
    torch.manual_seed(0)
    linear = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=steps, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x), y) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear


def fit_linear_probe(train_x, train_y, val_x, val_y, num_classes: int, l2_grid=DEFAULT_L2_GRID) -> LinearProbe:
    """Fit one probe per L2 strength on train, keep the best on val (ties: the stronger L2)."""
    import torch
    x = torch.as_tensor(np.asarray(train_x, np.float32))
    y = torch.as_tensor(np.asarray(train_y, np.int64))
    vx = torch.as_tensor(np.asarray(val_x, np.float32))
    vy = torch.as_tensor(np.asarray(val_y, np.int64))
    best = None
    for l2 in sorted(l2_grid, reverse=True):
        linear = _fit(x, y, num_classes, l2)
        with torch.no_grad():
            accuracy = float((linear(vx).argmax(1) == vy).float().mean()) if len(vy) else 0.0
        if best is None or accuracy > best.val_accuracy:
            best = LinearProbe(linear.weight.detach().numpy().copy(), linear.bias.detach().numpy().copy(),
                               l2, accuracy)
    return best
