"""grlhf: Generative RLHF-V in JAX/Flax."""

__version__ = "0.1.0"
