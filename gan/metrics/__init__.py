"""Sample-quality metrics, a registry keyed by name (DESIGN.md §5 naming):

- ``fd_digits``: Fréchet distance in the features of a small classifier trained on the embedded
  digits (weights-free: the classifier is trained once and cached). Lower is better.
- ``coverage``: share of the 10 digit classes the classifier finds among generated samples
  (``coverage_kl``: KL of the predicted class histogram from uniform). Higher / lower is better.
- ``fid`` / ``is``: Fréchet Inception Distance and Inception Score with torch-fidelity's
  InceptionV3 weights from a local file (``--inception-weights``).
"""

from .classifier import DigitFeatures, load_or_train_classifier
from .frechet import frechet_distance
from .suite import evaluate

__all__ = ["DigitFeatures", "evaluate", "frechet_distance", "load_or_train_classifier"]
