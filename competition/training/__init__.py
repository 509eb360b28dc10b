"""The fold trainer: every model on every fold and seed, with augmentation, TTA and prefix caching.

Writes `runs/<experiment>/<model>/{oof.csv,test.csv,meta.json}` (see docs/architecture.md);
`store.load_run` reads them back for the stacker.
"""
