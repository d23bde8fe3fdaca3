"""prefkit's version (a leaf module: provenance writers import it without the package's API)."""

__version__ = "0.1.0"
