"""The parts of ``benchmarks/gpu_check.py``: the check's state and command runner (:mod:`.check`), the probes it
runs in subprocesses (:mod:`.probes`), the training steps (:mod:`.training`), the other steps (:mod:`.steps`),
the loop over the steps (:mod:`.run`) and the report (:mod:`.report`).

Standard library only: the parent process never imports torch or nlseg, so neither can break the report.
"""
