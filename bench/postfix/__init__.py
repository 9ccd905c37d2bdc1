"""Postfix for bench/compare.py: a private instance in a temp dir (see instance.py)."""
