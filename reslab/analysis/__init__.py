"""Diagnostics that work for every connection through one recording hook (see record.py)."""
from .record import Recorder, record

__all__ = ["Recorder", "record"]
