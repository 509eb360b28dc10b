"""`python -m competition` runs the CLI."""

from competition.cli import main

if __name__ == "__main__":  # not when a spawned training process re-imports this module
    main()
