"""What the benchmark scripts share: running a command under a time limit, and Markdown tables.

Standard library only: ``gpu_check.py``'s parent process never imports torch or nlseg, and the measuring
process of ``vs_mmseg.py`` runs in mmsegmentation's venv, which has no nlseg.
"""
