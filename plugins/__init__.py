"""Built-in fairness strategies, installed as the ``fairdefense_plugins`` package.

Each module holds one strategy and imports only the public API of ``fairdefense``
and its toolkit (:mod:`fairdefense.toolkit`); no strategy imports another. Each is
registered in ``setup.cfg`` under the ``fairdefense.plugins`` entry-point
group, the same path a third-party package takes.
"""
