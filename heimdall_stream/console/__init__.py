"""What the command line shows an operator, apart from the commands themselves.

Settings in ``--help``, the effective settings, error lines with what to set, and progress of
long commands.  ``heimdall_stream.cli`` holds the commands.
"""
