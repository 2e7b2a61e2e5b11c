"""One module per `curate` command group."""
