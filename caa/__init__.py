"""Customer AI Analytics: the edge (settings, AWS clients, command line)."""
