"""A standard linear probe: multinomial logistic regression on image embeddings, the L2 strength chosen by
validation loss (the criterion every model of a comparison is selected by; with a few validation images per
class, accuracy moves in steps and favours strengths so strong that the probe's probabilities are near
uniform — ECE 0.67 on the hard demo preset). Every strength of the grid is fitted at once, as one stacked
problem of the sparse head's solver (cbmctl.proximal.proximal_gradient without an l1 term): deterministic and
full-batch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_L2_GRID = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # half-decades
MAX_ITERATIONS = 5000
TOLERANCE = 1e-5  # tight enough that the chosen probe does not depend on where the solver started
PROGRESS_ITERATIONS = 25  # progress is reported this often


@dataclass
class LinearProbe:
    weight: np.ndarray  # K × D
    bias: np.ndarray    # K
    l2: float
    val_accuracy: float
    val_loss: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, np.float32) @ self.weight.T + self.bias

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
        return float((self.logits(features).argmax(1) == np.asarray(labels)).mean()) if len(labels) else 0.0


def fit_linear_probe(train_x, train_y, val_x, val_y, num_classes: int, l2_grid=DEFAULT_L2_GRID,
                     log=None) -> LinearProbe:
    """Minimise CE + l2·‖W‖² for every l2 of the grid together; keep the one with the lowest validation
    loss (ties: the stronger l2). `log` hears how far a long fit is (cbmctl.logs.Progress), counted against
    the iteration cap (the fit stops earlier once every strength is solved)."""
    import torch

    from cbmctl.logs import Progress
    from cbmctl.proximal import proximal_gradient
    from cbmctl.sparse import Design, cross_entropy, lipschitz_estimate, validation_loss
    grid = sorted(l2_grid, reverse=True)
    s = len(grid)
    x = torch.as_tensor(np.asarray(train_x, np.float32))
    y = torch.as_tensor(np.asarray(train_y, np.int64))
    vx = torch.as_tensor(np.asarray(val_x, np.float32))
    vy = torch.as_tensor(np.asarray(val_y, np.int64))
    train = Design(lambda start, stop: x[None, start:stop].expand(s, -1, -1), y, 1 << 16, materialise=False)
    val = Design(lambda start, stop: vx[None, start:stop].expand(s, -1, -1), vy, 1 << 16, materialise=False)
    solving = Progress(log, MAX_ITERATIONS, f"linear probe ({s} L2 strengths together)",
                       "iterations at most (it stops once every strength is solved)", estimate="at most")
    strengths = torch.tensor(grid) * 2  # the solver's penalty is ½·l2'·‖W‖²
    weight, bias, *_ = proximal_gradient(cross_entropy(train), torch.zeros(s, num_classes, x.shape[1]),
                                         torch.zeros(s, num_classes), lipschitz_estimate(train) + strengths,
                                         torch.zeros(s), strengths, MAX_ITERATIONS, TOLERANCE,
                                         on_check=lambda iteration, *_: solving.advance(iteration - solving.done),
                                         check_every=PROGRESS_ITERATIONS)
    if len(vy):
        accuracy = (val.logits(weight, bias).argmax(-1) == vy[None]).float().mean(1).tolist()
        loss = validation_loss(val, weight, bias).tolist()
    else:
        accuracy, loss = [0.0] * s, [0.0] * s
    best = min(range(s), key=lambda i: (loss[i], i))
    return LinearProbe(weight[best].numpy().copy(), bias[best].numpy().copy(), grid[best], accuracy[best],
                       loss[best])
