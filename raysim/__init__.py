"""raysim: Ray-native architecture ablations of neural PDE surrogates."""

__version__ = "0.1.0"
