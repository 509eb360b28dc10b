"""Stacking: turn the stored OOF and test predictions of many runs into one submission.

The stacker knows nothing of CNNs: it sees a table of out-of-fold predictions (one column per
run) plus side features (angle, band statistics, angle groups). Every method follows the
scikit-learn estimator contract, and every reported score comes from the same outer folds as
the base models (nested where a method tunes anything).
"""
