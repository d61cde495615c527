"""photon: run and train PHOTON hierarchical language models for long-document work."""

__version__ = "0.1.0"
