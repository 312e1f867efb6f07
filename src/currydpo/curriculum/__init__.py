"""Curriculum: difficulty measures on pairs -> ordered training stages."""
