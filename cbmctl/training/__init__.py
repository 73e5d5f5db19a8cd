"""Training Concept Bottleneck Models on cached embeddings, and the baselines on the same split.

The stages, each its own module: data (the cache's embeddings and concept scores on the device), stack (S
models' state, trained as one tensor program), epochs (the stacked loop with early stopping), checkpoint
(format, identity, validation; kept by a store the trainer is handed), heads (the faithfulness cutoff, the
sparse layer, evaluation), baselines; trainer joins them. cbmctl.experiment joins training and a run dir."""
from cbmctl.training.baselines import run_baseline
from cbmctl.training.checkpoint import CheckpointStore
from cbmctl.training.data import TrainingData, prepare_data
from cbmctl.training.evaluation import evaluate_splits
from cbmctl.training.result import TrainResult
from cbmctl.training.stack import member_configs
from cbmctl.training.trainer import describe, train_cbm, train_many

__all__ = ["CheckpointStore", "TrainResult", "TrainingData", "describe", "evaluate_splits", "member_configs",
           "prepare_data", "run_baseline", "train_cbm", "train_many"]
