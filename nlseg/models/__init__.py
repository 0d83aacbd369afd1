"""Segmentation models (backbone + blocks + heads) and the registry that builds them by name.

Every row of ANN's Table 6 and of the Denoised NL paper's Tables II-IV is one ``create_model`` call;
``list_models()`` names them and the model table ``ZOO`` (:mod:`nlseg.models.zoo`) gives the paper row each
reproduces and its figures.
A model's forward returns ``{"out": logits, "aux": [logits, ...]}``, all at the input's resolution.
"""
from nlseg.models.ann import ANN
from nlseg.models.base import SegHead, Segmentor
from nlseg.models.denoised import DenoisedNLNet, DenoisedNLPipeline
from nlseg.models.fcn import FCN
from nlseg.models.registry import create_model, list_models, model_info, model_options, register_model
from nlseg.models.zoo import ZOO, ZooEntry, ZooVariant, zoo_entry

__all__ = [
    "ANN",
    "FCN",
    "DenoisedNLNet",
    "DenoisedNLPipeline",
    "ZOO",
    "SegHead",
    "Segmentor",
    "create_model",
    "list_models",
    "model_info",
    "model_options",
    "register_model",
    "ZooEntry",
    "ZooVariant",
    "zoo_entry",
]
