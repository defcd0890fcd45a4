"""Command-line entry points: dahu_server, dahu-register, dahu-reprocess."""
