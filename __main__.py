"""Pulumi entry point: see hastack/program.py."""

from hastack.program import main

main()
