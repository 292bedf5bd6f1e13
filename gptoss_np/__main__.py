"""`python -m gptoss_np`: the `gptoss-generate` command line (see cli.py)."""

from .cli import run

if __name__ == "__main__":
    run()
