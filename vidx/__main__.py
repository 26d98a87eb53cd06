"""`python -m vidx` runs the command line."""

from vidx.cli import main

main()
