"""``python -m imgsynth`` is the ``imgsynth`` command, e.g. ``accelerate launch -m imgsynth train SET OUT``."""

from imgsynth.cli.app import main

if __name__ == "__main__":
    main()
