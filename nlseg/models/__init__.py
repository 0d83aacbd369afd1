"""Segmentation models (backbone + blocks + heads) and the registry that builds them by name.

Every row of ANN's Table 6 and of the Denoised NL paper's Tables II-IV is one ``create_model`` call;
``list_models()`` names them and ``model_info(name)`` gives the paper row each reproduces.
A model's forward returns ``{"out": logits, "aux": [logits, ...]}``, all at the input's resolution.
"""
# Importing a family registers its models; this order is the order of list_models().
from nlseg.models.fcn import FCN  # isort: skip
from nlseg.models.ann import ANN  # isort: skip
from nlseg.models.base import SegHead, Segmentor
from nlseg.models.denoised import DenoisedNLNet, DenoisedNLPipeline
from nlseg.models.registry import create_model, list_models, model_info, model_options, register_model

__all__ = [
    "ANN",
    "FCN",
    "DenoisedNLNet",
    "DenoisedNLPipeline",
    "SegHead",
    "Segmentor",
    "create_model",
    "list_models",
    "model_info",
    "model_options",
    "register_model",
]
