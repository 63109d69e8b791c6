"""Bayesian LoRA: SG-MCMC posterior sampling over LoRA adapters of Hugging Face encoders."""

__version__ = "0.1.0"
