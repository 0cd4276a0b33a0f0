"""Sample-quality metrics, a registry keyed by name (DESIGN.md §5 naming):

- ``fd`` (reported as ``fd_<data>``: ``fd_digits``, ``fd_cifar10``, ``fd_folder``): Fréchet
  distance in the features of a small classifier trained on one half of the run's own data,
  against the statistics of the other, held-out half (weights-free: the classifier is trained
  once and cached). Lower is better.
- ``coverage``: share of the 10 digit classes the classifier finds among generated samples
  (``coverage_kl``: KL of the predicted class histogram from uniform). Higher / lower is better.
- ``fid`` / ``is``: Fréchet Inception Distance and Inception Score with torch-fidelity's
  InceptionV3 weights from a local file (``--inception-weights``).
"""

from .classifier import DigitFeatures, load_or_train_classifier
from .frechet import frechet_distance
from .suite import canonical_metrics, evaluate, fd_name

__all__ = ["DigitFeatures", "canonical_metrics", "evaluate", "fd_name", "frechet_distance",
           "load_or_train_classifier"]
