"""Kaggle competition harness for the Statoil/C-CORE Iceberg Classifier Challenge."""

__version__ = "0.1.0"
