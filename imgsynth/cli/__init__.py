"""The `imgsynth` command line: thin typer commands over the library."""
