"""Public API, kept where notebooks import it: the block detector lives in analysis/science/blocks.py."""

from .science.blocks import Block, find_blocks

__all__ = ["Block", "find_blocks"]
