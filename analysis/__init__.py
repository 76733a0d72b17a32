"""widedeep: how ResNet representations change with width and depth (Nguyen, Raghu & Kornblith, 2021)."""
