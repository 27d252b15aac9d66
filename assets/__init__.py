"""Domain asset packages. Each exposes `defs`: its assets, sensors and checks."""
