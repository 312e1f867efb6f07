"""currydpo: Curry-DPO — curriculum learning over several ranked preference pairs per prompt."""

__version__ = "0.1.0"
