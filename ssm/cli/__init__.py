"""Command-line interface (Typer). ``ssm`` and ``python cli.py`` run the same app."""
