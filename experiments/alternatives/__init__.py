"""jaxheads against what users would do instead, in one run (issue 7).

Parts, each a module with one ``run_*`` function returning a JSON-able dict:

* :mod:`.trial_loop` — 16 head designs x 5 epochs three ways: the Keras trial loop (``model.fit`` per design on
  a frozen ``include_top=False`` base, images through the backbone every epoch), a plain sequential JAX loop on
  cached features, and jaxheads (one feature pass + one 16-member sweep). Wall times, ratios, per-head accuracy.
* :mod:`.efficiency` — the sweep's useful FLOP/s as a fraction of a large float32 matmul in the same process.
* :mod:`.forward` — backbone forward images/s, Flax vs Keras on the same weights and inputs.
* :mod:`.quality` — the recommended head vs scikit-learn ``LogisticRegression`` (C tuned on val) vs the
  closed-form ridge probe, test accuracy over seeds.

Sizes (``tiny`` for tests, ``default`` for a few minutes on 2 CPU cores, ``full`` for a GPU) live in
:mod:`.config`; :mod:`.run` is the entry point (``python -m experiments.alternatives.run``).
"""
