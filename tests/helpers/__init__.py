"""Test helpers shared by several test files (imported as `helpers.<module>`; tests/ is on sys.path)."""
