"""The `tunery` command line: server operation and client commands."""
