"""Data sets as Tasks (see base.py). ``get_task(name, **kwargs)`` is the one entry point."""
from .base import Task

__all__ = ["Task"]
