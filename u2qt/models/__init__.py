"""u2qt/models: the models as Flax modules that hold parameters (the math they share lives in
``u2qt.nn``, ``u2qt.quant`` and ``u2qt.losses``; objectives are assembled by ``u2qt.tasks``)."""
