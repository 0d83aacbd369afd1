"""Segmentation models (backbone + decoder + auxiliary heads) and the registry that builds them by name.

Every row of ANN's Table 6 and of the Denoised NL paper's Tables II-IV is one ``create_model`` call;
``list_models()`` names them and the model table ``ZOO`` (:mod:`nlseg.models.zoo`) gives the paper row each
reproduces and its figures. A model is a :class:`Segmentor` composed by a family builder (:func:`fcn`,
:func:`ann`, :func:`denoised_nl_pipeline`, :func:`denoised_nl`, :func:`context_head`) from a backbone (:class:`BackboneOptions`),
auxiliary heads and the family's decoder. Its forward returns ``{"out": logits, "aux": [logits, ...]}``,
all at the input's resolution ("aux" empty in eval mode unless ``with_aux=True``).
:func:`nlseg.models.fold.fold_batchnorm` folds its batch norms into the convolutions for inference, and
:func:`nlseg.models.fuse.fuse_epilogues` then runs its residual blocks' ReLUs and shortcut sums inside oneDNN's
convolutions on the CPU.
"""
from nlseg.models.ann import ANNDecoder, ann
from nlseg.models.base import BackboneOptions, SegHead, Segmentor, build_aux_heads
from nlseg.models.denoised import DenoisedNLDecoder, denoised_nl, denoised_nl_pipeline
from nlseg.models.fcn import FCNDecoder, fcn
from nlseg.models.heads import HeadDecoder, context_head
from nlseg.models.registry import create_model, list_models, model_info, model_options, register_model
from nlseg.models.zoo import ZOO, ZooEntry, ZooVariant, zoo_entry

__all__ = [
    "ANNDecoder",
    "BackboneOptions",
    "DenoisedNLDecoder",
    "FCNDecoder",
    "HeadDecoder",
    "SegHead",
    "Segmentor",
    "ZOO",
    "ZooEntry",
    "ZooVariant",
    "ann",
    "build_aux_heads",
    "context_head",
    "create_model",
    "denoised_nl",
    "denoised_nl_pipeline",
    "fcn",
    "list_models",
    "model_info",
    "model_options",
    "register_model",
    "zoo_entry",
]
