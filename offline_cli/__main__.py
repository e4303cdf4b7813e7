"""``python -m offline_cli`` runs the command line."""

from offline_cli.cli import main

if __name__ == "__main__":
    main()
