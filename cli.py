#!/usr/bin/env python3
"""Thin entry point: ``python cli.py ...`` runs the same commands as the ``ssm`` script."""

from ssm.cli.app import main

if __name__ == "__main__":
    main()
