"""`curate`: the command line (main, output helpers, commands/, bench/)."""
