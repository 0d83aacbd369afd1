"""The efficiency tables, one short module each, on :mod:`nlseg.analysis.measure` and :mod:`nlseg.analysis.report`.

* :mod:`~nlseg.analysis.tables.ops` — the attention ops, released form against nlseg's (``nlseg bench ops``);
* :mod:`~nlseg.analysis.tables.ann_table1` — ANN Table 1, NB against APNB, and any block (``nlseg bench blocks``);
* :mod:`~nlseg.analysis.tables.ann_fig2` — ANN Fig. 2, NB and APNB split into their operations (``nlseg bench breakdown``);
* :mod:`~nlseg.analysis.tables.ann_table2` — ANN Table 2, whole networks (``nlseg bench models``);
* :mod:`~nlseg.analysis.tables.dnl_table5` — Denoised NL Table V, the blocks at 1/16 (``nlseg bench table5``).
* :mod:`~nlseg.analysis.tables.train_speed` — a recipe's training speed per speed switch (``nlseg bench train``).

Each turns plain values into cases, measures them with :func:`~nlseg.analysis.measure.measure` and returns a
:class:`~nlseg.analysis.report.Report`. To add a table: a module here with one such function, and a
subcommand in ``nlseg/cli/bench.py``.
"""
