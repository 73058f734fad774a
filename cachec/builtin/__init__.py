"""Bundled trained models (see tools/README_tiny_dit.md)."""
