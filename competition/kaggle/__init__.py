"""The Kaggle round trip: kernel bundle and push, submit, score sync, ledger, leaderboard placement.

Modules: credentials (find, never reveal), client (the official `kaggle` command), settings
(configs/kaggle.yaml), kernel, submit, scoring (Kaggle's scorer offline), ledger, placement,
leaderboard. Import the one you need; nothing heavy is imported here.
"""
