"""The studies behind optax_lambc's results, apart from the examples users copy.

* ``study.demo``: the offline digits demo (LAMB against LAMBC bounds, seeds
  paired), ``python -m examples.demo`` (an alias) or ``python -m study.demo``.
* ``study.reproduce``: the LAMBC paper's experiments and the LM study's two
  rounds (``--experiment table1|figure2|figure3|extras|lm_batch|lm_round2``).
* ``study.grid``: grids of training runs (settings x seeds), resumable, with
  paired tables and curves.
* ``study.lm`` / ``study.lm_report``: the LM large-batch study's first round;
  ``study.lm_round2`` / ``study.lm_round2_report``: its second.
* ``study.bit_identity``: trains one configuration from two commits and
  compares the parameters bit for bit.

Everything here trains through ``examples.lib`` (the training library).
"""
