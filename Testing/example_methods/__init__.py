"""Method kinds that exist only to show (and test) that a new kind is one file plus a registry entry."""
