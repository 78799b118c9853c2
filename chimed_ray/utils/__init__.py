"""Small shared helpers: atomic files, devices, logging."""
