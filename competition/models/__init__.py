"""The transfer-learning model zoo: one registry, one interface (`base.ImageModel`) for Keras and timm models."""
