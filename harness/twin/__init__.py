"""Boards and their emulated twins: a profile captured from a real board, and how often the twin agrees."""
