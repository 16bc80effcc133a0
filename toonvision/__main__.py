"""``python -m toonvision`` runs the command-line tool."""

from toonvision.cli import main

main()
