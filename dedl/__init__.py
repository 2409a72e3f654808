"""dedl: Differential Equations for Deep Learning.

The package behind the executable textbook: ODE and SDE solvers (``dedl.solvers``), control paths for
controlled differential equations (``dedl.interpolation``), penalties on the dynamics of continuous-depth models (``dedl.regularizers``),
the models the book builds on them (``dedl.nn``), data generators (``dedl.data``), a training loop with robustness metrics (``dedl.train``),
plotting helpers (``dedl.plot``) and small utilities (``dedl.utils``).
"""

__version__ = "0.1.0"
