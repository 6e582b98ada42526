"""`python -m meshactors` runs the CLI (used to start a detached daemon)."""

from meshactors.cli import main

main()
