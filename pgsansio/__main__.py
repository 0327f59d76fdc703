"""``python -m pgsansio`` runs the command line, like the ``pgsansio`` script."""

from pgsansio.cli import main

if __name__ == "__main__":
    main()
