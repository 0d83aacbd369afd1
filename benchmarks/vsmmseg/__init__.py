"""The parts of ``benchmarks/vs_mmseg.py``: what is compared (:mod:`.networks`), one measurement and its result
(:mod:`.records`), the measuring process (:mod:`.worker`, with :mod:`.nlseg_side` and :mod:`.mmseg_side`), the
driver that runs it per column (:mod:`.driver`) and the tables (:mod:`.table`).

Every module imports the standard library only when imported: the measuring process of mmseg's side runs
this package with the mmseg venv's Python, which has no nlseg; torch, nlseg and mmseg are imported inside the
functions that use them.
"""
