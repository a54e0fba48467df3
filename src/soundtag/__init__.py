"""soundtag: train, clean, evaluate and ensemble audio taggers."""

__version__ = "0.1.0"
