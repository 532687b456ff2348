"""The bad-input table: one row per user mistake or damaged file, and what the user sees.

Each module here holds the rows of one area (``CASES``); tests/test_bad_inputs.py runs them
all. A new user-facing error gets its row in the module of its area.
"""
