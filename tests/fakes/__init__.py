"""Test doubles that run as real servers (fake model providers)."""
