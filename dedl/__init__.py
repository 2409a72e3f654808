"""dedl: Differential Equations for Deep Learning.

The package behind the executable textbook: ODE and SDE solvers (``dedl.solvers``), the models the
book builds on them (``dedl.nn``), regularizers, data generators, a training loop and plotting helpers.
"""

__version__ = "0.1.0"
