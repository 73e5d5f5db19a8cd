"""The embedded default: a generated image world with ground-truth concepts and a tiny CLIP trained on it."""
