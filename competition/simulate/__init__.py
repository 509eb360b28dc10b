"""The embedded default dataset: a simulated Statoil/C-CORE competition from radar physics.

scenes.py decides who is in it (scenes, exact angles, labels, splits, machine-generated decoys),
clutter.py / targets.py / radar.py make the pixels, generate.py wires them from one seed, and
writer.py writes Kaggle's files.
"""

from competition.simulate.writer import write_simulated

__all__ = ["write_simulated"]
