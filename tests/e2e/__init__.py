"""End-to-end tests: pizauth among real programs (a package, so that its conftest does not
shadow the top-level tests' `conftest` module)."""
