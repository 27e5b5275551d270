"""Shared by every test directory. Having this file here puts `tests/` on `sys.path`
(pytest's rootdir conftest), so modules shared across unit and integration tests import
by name: `store_contract` is the one suite every store passes."""
