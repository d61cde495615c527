"""Corpus fetching, extraction, splitting and tokenization."""
