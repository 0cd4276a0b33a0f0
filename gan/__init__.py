"""gan: a sparse GAN trainer on top of sparsekit (``python -m gan.train``)."""
