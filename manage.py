#!/usr/bin/env python
"""Django's command-line utility for Conveyor."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.management import execute_from_command_line

    from config.env import one_line_configuration_errors

    one_line_configuration_errors()

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
