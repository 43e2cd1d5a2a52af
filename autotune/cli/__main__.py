"""`python -m autotune.cli`: the `autotune` command, as the workers of a distributed search start it."""

from autotune.cli import main

main()
