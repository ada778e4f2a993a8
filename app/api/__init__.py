"""HTTP: thin translators between requests and the run manager / worker registry."""
