"""Applications built on the library: they may import the engine, data sets and models; nothing in the
library imports them. ``nlseg.apps.demo`` is ``nlseg demo`` (the embedded Baseline vs Denoised NL comparison);
``nlseg.apps.reproduce`` is ``nlseg reproduce`` (the papers' ablation tables at demo size, over seeds).
"""
