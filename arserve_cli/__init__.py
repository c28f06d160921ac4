"""The `arserve` command: one entry point with subcommands (serve, export, train, sample, score, verify, models).

Each subcommand imports what it needs when it runs, so `arserve serve`, `verify`, `sample`, `score` and `models`
work without torch or the training code (models/); `train` and `export` need them.
"""
