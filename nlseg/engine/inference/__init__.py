"""Inference: the inference-only model (:mod:`.model`), whole-image or sliding-window prediction with multi-scale
and flip testing (:mod:`.merge`), and the Segmenter API (:mod:`.segmenter`).

Segmenting folders of image files (``nlseg predict``) is :mod:`nlseg.engine.predict`.
"""
from nlseg.engine.inference.merge import predict_probs, predict_with_config
from nlseg.engine.inference.model import AMP_DTYPES, InferenceModel, InferenceOptions, prepare_for_inference
from nlseg.engine.build import build_model_from_checkpoint, saved_normalize
from nlseg.engine.inference.segmenter import IMAGE_SUFFIXES, Segmenter, dataset_palette

__all__ = [
    "AMP_DTYPES",
    "IMAGE_SUFFIXES",
    "InferenceModel",
    "InferenceOptions",
    "Segmenter",
    "build_model_from_checkpoint",
    "dataset_palette",
    "predict_probs",
    "predict_with_config",
    "prepare_for_inference",
    "saved_normalize",
]
