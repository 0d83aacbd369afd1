"""What ``vs_mmseg.py`` compares: the networks on both sides and nlseg's columns (its inference levers).

Imported by the measuring processes too, in nlseg's venv and in mmseg's: the standard library only.
"""
from __future__ import annotations

from dataclasses import dataclass

NUM_CLASSES = 19
AUX_WEIGHT = 0.4  # mmseg's auxiliary FCNHead loss weight, used for nlseg's auxiliary outputs too
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Network:
    """One row family: the nlseg registry name and the mmseg config of the same method, and how they compare."""

    title: str
    nlseg: str  # registry name, {depth} filled in
    mmseg: str  # config path under mmseg's configs/, {depth} filled in
    like_for_like: bool
    note: str


NETWORKS: dict[str, Network] = {
    "ann": Network(
        "ANN", "ann_r{depth}", "ann/ann_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py", True,
        "like-for-like: the ANN paper's network on both sides (AFNB fusing layer3 and layer4 to 2048 channels, "
        "conv3x3 -> 512, APNB, classifier, at 1/8); layer details differ: nlseg's is the released one (classic "
        "stem with ceil-mode pool, layer3 auxiliary head 1024 -> 512, dropout 0.05), mmseg's has a deep stem, a "
        "1024 -> 256 auxiliary head and its own key/query projections",
    ),
    "nl": Network(
        "NL", "nl_head_r{depth}", "nonlocal_net/nonlocal_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py", True,
        "like-for-like: NLHead on layer4 at 1/8 on both sides (conv3x3 -> 512, non-local block with 256 key "
        "channels, conv3x3, concat with layer4, conv3x3 -> 512, classifier), FCN auxiliary head on layer3",
    ),
    "danet": Network(
        "DANet", "danet_head_r{depth}", "danet/danet_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py", True,
        "like-for-like: DAHead on layer4 at 1/8 on both sides (PAM and CAM branches, summed, classifier), FCN "
        "auxiliary head on layer3; in training mmseg also runs a classifier and a loss on each branch (two 1x1 "
        "convolutions 512 -> 19), which nlseg's has not",
    ),
    "aspp": Network(
        "ASPP (DeepLabV3)", "aspp_head_r{depth}", "deeplabv3/deeplabv3_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py",
        True,
        "like-for-like: ASPPHead on layer4 at 1/8 on both sides (image pool + 1x1 + dilations 12, 24, 36, "
        "bottleneck conv3x3 -> 512), FCN auxiliary head on layer3",
    ),
    "psp": Network(
        "PSP", "ppm_head_r{depth}", "pspnet/pspnet_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py", True,
        "like-for-like: PSPHead on layer4 at 1/8 on both sides (bins 1, 2, 3, 6, bottleneck conv3x3 -> 512), "
        "FCN auxiliary head on layer3",
    ),
    # The Denoised NL paper's rows: the same blocks inside its pipeline, against mmseg's heads (not by default).
    "nl-dnl": Network(
        "NL in the DNL pipeline", "nl_r{depth}", "nonlocal_net/nonlocal_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py",
        False,
        "architectural: nlseg = Denoised NL pipeline (reduction to 512 at 1/16, block, x2 upsample, concat with "
        "layer4 and global context, layer2 and layer3 auxiliary heads); mmseg = NLHead at 1/8",
    ),
    "danet-dnl": Network(
        "DANet in the DNL pipeline", "danet_r{depth}", "danet/danet_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py",
        False,
        "architectural: nlseg = Denoised NL pipeline with a DANet block at 1/16; mmseg = DAHead at 1/8",
    ),
    "aspp-dnl": Network(
        "ASPP in the DNL pipeline", "aspp_r{depth}",
        "deeplabv3/deeplabv3_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py", False,
        "architectural: nlseg = Denoised NL pipeline with ASPP at 1/16 on 512 channels; mmseg = ASPPHead on "
        "layer4's 2048 channels at 1/8 (dilations 1, 12, 24, 36)",
    ),
    "psp-dnl": Network(
        "PPM in the DNL pipeline", "ppm_r{depth}", "pspnet/pspnet_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py",
        False,
        "architectural: nlseg = Denoised NL pipeline with PPM at 1/16 on 512 channels; mmseg = PSPHead on "
        "layer4's 2048 channels at 1/8",
    ),
}
DEFAULT_NETWORKS: tuple[str, ...] = ("ann", "nl", "danet", "aspp", "psp")
"""The like-for-like rows; the ``*-dnl`` rows (the Denoised NL pipeline's) only when asked for."""

# Inference columns of nlseg: column -> keyword arguments of nlseg.engine.inference.InferenceOptions (and the
# benchmark knob channels_last_heads of prepare_for_inference), or None for the
# model itself in eval mode ("with_aux": forward(x, with_aux=True), every auxiliary head computed as before the
# inference path existed; "as_built": forward(x), only the heads the decoder reads). Each lever alone is on top
# of "as_built"; "exact" is every lever that keeps float32 results exact up to rounding.
INFER_LEVERS: dict[str, dict | None] = {
    "with_aux": None,
    "as_built": None,
    "fold_bn": dict(fuse=False, aux=False, fold_bn=True, channels_last=False, amp="off", compile=False),
    "channels_last": dict(fuse=False, aux=False, fold_bn=False, channels_last=True, amp="off", compile=False),
    "bf16": dict(fuse=False, aux=False, fold_bn=False, channels_last=False, amp="bf16", compile=False),
    "compile": dict(fuse=False, aux=False, fold_bn=False, channels_last=False, amp="off", compile=True),
    "exact_unfused": dict(fuse=False, aux=False, fold_bn=True, channels_last=True, amp="off", compile=False),
    "exact": dict(aux=False, fold_bn=True, channels_last=True, amp="off", compile=False),
    "exact_cl_heads": dict(aux=False, fold_bn=True, channels_last=True, channels_last_heads=True, amp="off",
                           compile=False),
    "exact_compile": dict(aux=False, fold_bn=True, channels_last=True, amp="off", compile=True),
}
EXACT = "exact"
TRAIN_LEVERS: tuple[str, ...] = ("as_built", "channels_last", "compile")
SLOW_LEVERS = frozenset({"compile", "exact_compile"})  # only with --compile
MMSEG = "mmseg"
