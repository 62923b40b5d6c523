"""segcli: train segmentation_models_pytorch models from YAML experiment files."""

__version__ = "0.1.0"
