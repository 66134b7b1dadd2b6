"""`python -m engine`: see engine/cli.py."""

from .cli import run

if __name__ == "__main__":
    run()
