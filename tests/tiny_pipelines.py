"""Small, complete diffusers pipelines saved to a local directory, for the prompt → image tests.

The builders live in the package (:mod:`cachec.example_pipeline`, what ``cachec example-pipeline``
writes), so there is one copy; this module keeps the names the tests import.
"""

from cachec.example_pipeline import save_cogview3plus, save_flux, save_pixart

__all__ = ["save_cogview3plus", "save_flux", "save_pixart"]
