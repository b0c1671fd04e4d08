"""Route modules, one area each."""
